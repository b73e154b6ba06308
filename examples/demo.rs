//! Sends the integration guide's example assignments through a running worker and prints
//! each ack and result. Used by `scripts/run-local.sh`; see the README.
//!
//! It plays the Router (publishes on `caf.exec.assign.v1`), the approval UI (answers the
//! approval request as user1@example.com) and the upstream API of the HTTP example (a
//! local HTTP server, since this machine has no route to api.example.com).
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
    for (i, job) in jobs.into_iter().enumerate() {
        let a = json!({
            "version": "1",
            "assignment_id": format!("assign-{run}-{i}"),
            "request_id": format!("req-{run}-{i}"),
            "tenant_id": "tenant-789",
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
        let mut got = (false, false);
        while !(got.0 && got.1) {
            tokio::select! {
                _ = &mut deadline => return Err(format!("no answer for assignment {i} in 30 s: is the worker running?").into()),
                Some(m) = acks.next(), if !got.0 => {
                    println!("<- ack {}", String::from_utf8_lossy(&m.payload));
                    got.0 = true;
                }
                Some(m) = results.next(), if !got.1 => {
                    println!("<- result {}\n", String::from_utf8_lossy(&m.payload));
                    got.1 = true;
                }
            }
        }
    }
    println!("{n} example assignments: {n} acks and {n} results received.");
    Ok(())
}
