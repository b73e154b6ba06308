//! Sends the integration guide's example assignments through a running worker and prints
//! each ack and result. Used by `scripts/run-local.sh`; see the README.
//!
//! It plays the Router (publishes on `caf.exec.assign.v1`), the approval UI (answers the
//! approval request as user1@example.com) and the upstream API of the HTTP example (a
//! local HTTP server, since this machine has no route to api.example.com).
//!
//! Exits 0 only when every assignment got an `accepted` ack and a `success` result
//! carrying its ids (`assignment_id`, `request_id`, `tenant_id`); otherwise it names each
//! problem on stderr and exits 1.
//!
//! Environment: `NATS_URL` (default nats://127.0.0.1:4222), `DEMO_SQL_ROOT` (where the
//! worker's `--sql-root` is, so the SQL example's `db.sqlite` can be created there).

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let sql_root = std::env::var("DEMO_SQL_ROOT").unwrap_or_else(|_| "beamline-data/sql".into());
    std::fs::create_dir_all(&sql_root)?;
    let db = rusqlite::Connection::open(format!("{sql_root}/db.sqlite"))?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, name TEXT, email TEXT);
         INSERT OR REPLACE INTO users VALUES ('123', 'John', 'john@example.com');",
    )?;
    drop(db);

    // The HTTP example's upstream: answers like the guide's example result.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let body = r#"{"output":"processed"}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });

    let client = async_nats::connect(&url).await?;
    let mut acks = client.subscribe("caf.exec.assign.v1.ack").await?;
    let mut results = client.subscribe("caf.exec.result.v1").await?;
    let mut approvals = client.subscribe("caf.human.approval.request.v1").await?;
    let approver = client.clone();
    tokio::spawn(async move {
        while let Some(m) = approvals.next().await {
            let req: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            println!(
                "<- approval request {}",
                String::from_utf8_lossy(&m.payload)
            );
            let decision = json!({"assignment_id": req["assignment_id"], "approver": "user1@example.com",
                "approved": true, "comment": "Looks good"});
            println!("-> approval decision {decision}");
            let _ = approver
                .publish(
                    "caf.human.approval.decision.v1",
                    decision.to_string().into(),
                )
                .await;
        }
    });

    let run = std::process::id();
    let jobs = vec![
        json!({"type": "http.request", "method": "POST", "url": format!("http://{upstream}/process"),
               "headers": {"Content-Type": "application/json"}, "body": "{\"input\":\"test\"}", "timeout_ms": 5000}),
        json!({"type": "fs.put", "path": "/data/output.json", "content": "{\"data\":\"value\"}", "content_type": "application/json"}),
        json!({"type": "fs.put", "path": "/data/input.json", "content": "{\"input\":\"test\"}", "content_type": "application/json"}),
        json!({"type": "fs.get", "path": "/data/input.json"}),
        json!({"type": "sql.query", "connection_string": "sqlite://db.sqlite", "query": "SELECT * FROM users WHERE id = ?", "parameters": ["123"]}),
        json!({"type": "human.approval", "prompt": "Approve this request?", "timeout_ms": 60000,
               "approvers": ["user1@example.com", "user2@example.com"]}),
    ];
    let n = jobs.len();
    let tenant = "tenant-789";
    let mut failures = Vec::new();
    for (i, job) in jobs.into_iter().enumerate() {
        let id = format!("assign-{run}-{i}");
        let request_id = format!("req-{run}-{i}");
        let kind = job["type"].as_str().unwrap_or("?").to_owned();
        let a = json!({
            "version": "1",
            "assignment_id": id,
            "request_id": request_id,
            "tenant_id": tenant,
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "run_id": "run-def",
            "executor": {"provider_id": "openai", "endpoint": "https://api.openai.com/v1/chat/completions"},
            "job": job,
        });
        println!("-> assignment {a}");
        client
            .publish("caf.exec.assign.v1", a.to_string().into())
            .await?;
        client.flush().await?;
        let deadline = tokio::time::sleep(Duration::from_secs(30));
        tokio::pin!(deadline);
        let (mut ack, mut result) = (None, None);
        while ack.is_none() || result.is_none() {
            tokio::select! {
                _ = &mut deadline => break,
                Some(m) = acks.next(), if ack.is_none() => {
                    let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                    // Answers to other assignments (an earlier run, another client) are not ours.
                    if v["assignment_id"] == id.as_str() {
                        println!("<- ack {}", String::from_utf8_lossy(&m.payload));
                        ack = Some(v);
                    }
                }
                Some(m) = results.next(), if result.is_none() => {
                    let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                    if v["assignment_id"] == id.as_str() {
                        println!("<- result {}\n", String::from_utf8_lossy(&m.payload));
                        result = Some(v);
                    }
                }
            }
        }
        let problems = check_answer(ack.as_ref(), result.as_ref(), &id, &request_id, tenant);
        for p in &problems {
            eprintln!("FAILED: assignment {i} ({kind}, {id}): {p}");
        }
        failures.extend(problems.into_iter().map(|p| format!("{kind}: {p}")));
    }
    if !failures.is_empty() {
        eprintln!(
            "FAILED: {} problem(s) in {n} example assignments:",
            failures.len()
        );
        for f in &failures {
            eprintln!("  - {f}");
        }
        std::process::exit(1);
    }
    println!("{n} example assignments: {n} accepted acks and {n} success results with their ids.");
    Ok(())
}

/// What is wrong with an assignment's answer: the ack must be `accepted` and the result
/// `success`, both carrying the assignment's ids. Empty when all is well.
fn check_answer(
    ack: Option<&Value>,
    result: Option<&Value>,
    id: &str,
    request_id: &str,
    tenant: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    match ack {
        None => problems.push("no ack within 30 s (is the worker running?)".to_owned()),
        Some(a) => {
            if a["status"] != "accepted" {
                problems.push(format!(
                    "ack status {} (error: {}), expected \"accepted\"",
                    a["status"], a["error"]
                ));
            }
            if a["tenant_id"] != tenant {
                problems.push(format!(
                    "ack tenant_id {}, expected {tenant:?}",
                    a["tenant_id"]
                ));
            }
        }
    }
    match result {
        None => problems.push("no result within 30 s (is the worker running?)".to_owned()),
        Some(r) => {
            if r["status"] != "success" {
                problems.push(format!(
                    "result status {} (error: {}), expected \"success\"",
                    r["status"], r["error"]
                ));
            }
            for (field, want) in [
                ("assignment_id", id),
                ("request_id", request_id),
                ("tenant_id", tenant),
            ] {
                if r[field] != want {
                    problems.push(format!("result {field} {}, expected {want:?}", r[field]));
                }
            }
        }
    }
    problems
}
