//! Faults in JetStream mode: the worker killed with SIGKILL mid-run, nats-server killed and
//! restarted mid-run, SIGTERM drain. Every assignment ends with a result; none runs twice
//! once its result was published. And the connection the dedupe calls those promises rest
//! on travel over: each CPU thread's lane, not the control connection.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use beamline_testkit::prelude::*;
use serde_json::{json, Value};

const N: usize = 300;

async fn publish_batch(router: &Router, prefix: &str, n: usize) {
    for i in 0..n {
        let a = assignment(
            &format!("{prefix}-{i}"),
            "t",
            json!({"type":"fs.put","path":format!("out/{prefix}-{i}.json"),"content":"{\"n\":1}"}),
        );
        router.assign_unflushed(&a).await;
    }
    router.flush().await;
}

#[tokio::test]
async fn nats_restart_mid_run_loses_nothing() {
    let mut nats = Nats::start();
    let worker = Worker::builder(&nats.url()).start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    publish_batch(&router, "nr", N).await;
    // Let some work finish, then take the broker away under load.
    let end = Instant::now() + Duration::from_secs(20);
    while router.seen.on(RESULT).len() < 30 {
        assert!(Instant::now() < end, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nats.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart();
    let end = Instant::now() + Duration::from_secs(60);
    let ids = loop {
        let ids: HashSet<String> = stored_results(&router.client, "nr-")
            .await
            .into_keys()
            .collect();
        if ids.len() == N || Instant::now() > end {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        ids.len(),
        N,
        "every assignment has a stored result; worker log:\n{}",
        worker.logs()
    );
    let m = worker.metrics().await;
    assert!(
        m.contains("worker_nats_connected{connection=\"control\"} 1"),
        "reconnected: {m}"
    );
}

#[tokio::test]
async fn worker_killed_mid_run_then_restarted_runs_nothing_twice() {
    let nats = Nats::start();
    let mut worker = Worker::builder(&nats.url())
        .args(&["--js-ack-wait-ms=2000"])
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    publish_batch(&router, "k9", N).await;
    let end = Instant::now() + Duration::from_secs(20);
    while router.seen.on(RESULT).len() < 40 {
        assert!(Instant::now() < end, "no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    worker.kill9();
    worker.restart();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let ids: HashSet<String> = router
            .seen
            .on(RESULT)
            .iter()
            .filter_map(|r| {
                r["assignment_id"]
                    .as_str()
                    .filter(|s| s.starts_with("k9-"))
                    .map(str::to_owned)
            })
            .collect();
        if ids.len() == N {
            break;
        }
        assert!(
            Instant::now() < end,
            "only {} of {N} results; log:\n{}",
            ids.len(),
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A result seen twice is the stored one re-published, never a second execution.
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    for r in router.seen.on(RESULT) {
        if let Some(id) = r["assignment_id"].as_str().filter(|s| s.starts_with("k9-")) {
            by_id.entry(id.to_owned()).or_default().push(r.clone());
        }
    }
    for (id, rs) in &by_id {
        assert!(
            rs.iter().all(|r| r == &rs[0]),
            "{id} executed twice: {rs:?}"
        );
        assert_eq!(rs[0]["status"], "success", "{id}: {}", rs[0]);
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_work_and_exits_zero() {
    let nats = Nats::start();
    let mut worker = Worker::builder(&nats.url())
        .args(&["--shutdown-grace-ms=5000"])
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    router
        .assign(&assignment(
            "drain-1",
            "t",
            json!({"type":"human.approval","prompt":"p","approvers":["a"],"timeout_ms":60000}),
        ))
        .await;
    router
        .seen
        .wait_for(APPROVAL_REQUEST, "drain-1", Duration::from_secs(10))
        .await;
    let started = Instant::now();
    // The decision lands during the grace period: the in-flight approval still completes.
    let client = router.client.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = client
            .publish(
                APPROVAL_DECISION,
                r#"{"assignment_id":"drain-1","approver":"a","approved":true}"#.into(),
            )
            .await;
    });
    let status = tokio::task::spawn_blocking(move || {
        let st = worker.terminate(Duration::from_secs(10));
        (st, worker)
    })
    .await
    .expect("join");
    assert!(
        status.0.is_some_and(|s| s.success()),
        "exit 0 within the grace period: {:?}",
        status.0
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    let r = router.result("drain-1").await;
    assert_eq!(r["status"], "success", "{r}");
}

/// The dedupe bucket's lookup and store of every assignment go over the connection of the
/// lane that received it (driven by the same CPU thread), not over the control connection
/// (another thread: two hops and wake-ups per call). Counted by the broker: the messages
/// each connection of the worker sent it (`/connz`, `in_msgs`).
#[tokio::test]
async fn dedupe_calls_travel_on_the_lanes_not_the_control_connection() {
    let monitor = free_port();
    let nats = Nats::start_with(&["-m", &monitor.to_string()]);
    let worker = Worker::builder(&nats.url()).start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    publish_batch(&router, "ln", N).await;
    let end = Instant::now() + Duration::from_secs(60);
    while stored_results(&router.client, "ln-").await.len() < N {
        assert!(Instant::now() < end, "no results; log:\n{}", worker.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, body) = http_get(monitor, "/connz?limit=1024").await;
    assert_eq!(status, 200, "{body}");
    let connz: Value = serde_json::from_str(&unchunk(&body)).expect("connz is JSON");
    let (mut control, mut lanes, mut n_lanes) = (None, 0u64, 0);
    for c in connz["connections"].as_array().expect("connections") {
        let name = c["name"].as_str().unwrap_or_default();
        let sent = c["in_msgs"].as_u64().expect("in_msgs");
        if name.starts_with("beamline_worker ") && name.contains(" lane ") {
            lanes += sent;
            n_lanes += 1;
        } else if name.starts_with("beamline_worker ") {
            control = Some(sent);
        }
    }
    let control = control.expect("the control connection is named beamline_worker <id>");
    assert!(n_lanes >= 1, "{connz}");
    // Per assignment a lane sends the ack, the result, the bucket lookup and store and the
    // JetStream ack: 5 × N. The control connection sends set-up calls and heartbeats.
    assert!(
        lanes >= 4 * N as u64,
        "lanes sent {lanes} for {N} assignments"
    );
    assert!(
        control < (N / 2) as u64,
        "the control connection sent {control} messages for {N} assignments (lanes {lanes})"
    );
}

/// The body of an HTTP/1.1 answer that may come in chunks (the broker's monitoring port
/// sends a large `/connz` chunked); a body that is not chunked is returned as it is.
fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 {
            return out;
        }
        let Some(chunk) = after.get(..n) else {
            return body.to_owned();
        };
        out.push_str(chunk);
        rest = after[n..].trim_start_matches("\r\n");
    }
    body.to_owned()
}
