//! Core mode: the lanes in the queue group follow the load (`transport::LaneScale`). One lane
//! is in at start; a load brings the other in; once the load has passed it leaves, and
//! what the server had already routed to it is still answered; a lane whose queue is full
//! hands to another thread's queue, so 4002 is answered only when every queue is full.
//! Counted at the broker (its monitoring port) and in `worker_intake_lanes_active`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use beamline_testkit::metrics::metric_value;
use beamline_testkit::prelude::*;
use serde_json::{json, Value};

/// The worker's queue subscriptions on the assign subject, as the broker lists them.
async fn queue_members(monitor: u16) -> usize {
    let (status, _, body) = http_get(monitor, "/connz?subs=detail&limit=1024").await;
    assert_eq!(status, 200, "{body}");
    let body = if body.trim_start().starts_with('{') {
        body
    } else {
        dechunk(&body)
    };
    let v: Value = serde_json::from_str(&body).expect("connz json");
    v["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c["subscriptions_list_detail"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter(|s| s["subject"] == ASSIGN && s["qgroup"] == "beamline_worker")
        .count()
}

/// A chunked HTTP/1.1 body (the broker chunks a long answer) as one text.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

async fn lanes_active(w: &Worker) -> f64 {
    metric_value(&w.metrics().await, "worker_intake_lanes_active")
}

fn get(id: &str) -> Value {
    assignment(id, "t", json!({"type":"fs.get","path":"/nothing"}))
}

/// Each id answered exactly once.
fn answered_once(router: &Router, ids: &[String]) {
    let mut n: HashMap<String, usize> = HashMap::new();
    for r in router.seen.on(RESULT) {
        if let Some(id) = r["assignment_id"].as_str() {
            *n.entry(id.to_owned()).or_default() += 1;
        }
    }
    let missing: Vec<_> = ids.iter().filter(|i| !n.contains_key(*i)).take(5).collect();
    let twice: Vec<_> = n.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "missing {missing:?}, twice {twice:?}"
    );
}

/// What the worker and the broker say now, for a failure's message.
async fn state(w: &Worker, monitor: u16, router: &Router) -> String {
    let m = w.metrics().await;
    format!(
        "{} results, {} lanes active, {} queue members at the broker, {} dropped",
        router.seen.count(RESULT),
        metric_value(&m, "worker_intake_lanes_active"),
        queue_members(monitor).await,
        metric_value(&m, "worker_intake_dropped_total"),
    )
}

/// Assignments unanswered at once during the load: under the lane's client buffer (1 024
/// messages at `--max-memory-mb=256` on 2 lanes), so the client never has to drop one
/// however late its thread runs (core NATS drops what does not fit; that is counted, and
/// not what this test is about).
const OUTSTANDING: usize = 512;
/// The trickle after the load: well under what one lane carries, even in a debug build.
const TRICKLE_PER_S: f64 = 300.0;

#[tokio::test]
async fn lanes_join_under_load_and_leave_after_it_losing_nothing() {
    let monitor = free_port();
    let nats = NatsServer::start_with(&["-m", &monitor.to_string()]);
    let w = Worker::builder(&nats.url())
        .args(&[
            "--consumer=core",
            "--cpu-pool-size=2",
            // Smaller lane buffers: a leaving lane's allowance is its buffer + 4096.
            "--max-memory-mb=256",
        ])
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    assert_eq!(lanes_active(&w).await, 1.0);
    assert_eq!(queue_members(monitor).await, 1, "one lane in at start");
    let before = router.seen.count(RESULT);

    // The load: 20 000 assignments, 512 unanswered at any time; the one lane is saturated
    // and the other joins.
    let mut ids = Vec::new();
    let t0 = Instant::now();
    let mut joined = None;
    let mut look = t0;
    while ids.len() < 20_000 || router.seen.count(RESULT) < before + ids.len() {
        let answered = router.seen.count(RESULT) - before;
        let room = OUTSTANDING.saturating_sub(ids.len().saturating_sub(answered));
        for _ in 0..room.min(128).min(20_000 - ids.len()) {
            let id = format!("load-{}", ids.len());
            router.assign_unflushed(&get(&id)).await;
            ids.push(id);
        }
        router.flush().await;
        if joined.is_none() && Instant::now() >= look {
            look += Duration::from_millis(100);
            if queue_members(monitor).await == 2 {
                joined = Some(t0.elapsed());
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the load was not answered within 120 s: {} sent, {}",
            ids.len(),
            state(&w, monitor, &router).await
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let load = t0.elapsed();
    assert!(
        joined.is_some(),
        "the second lane never joined under the load ({load:?}): {}",
        state(&w, monitor, &router).await
    );

    // A trickle: the second lane leaves (it sends its bounded UNSUB), still gets its share
    // until the server has sent it what that UNSUB allows, then the broker drops it; every
    // assignment is answered once.
    let t1 = Instant::now();
    let mut sent = 0usize;
    let mut left = None;
    let mut look = t1;
    loop {
        let due = (t1.elapsed().as_secs_f64() * TRICKLE_PER_S) as usize;
        while sent < due.min(sent + 200) {
            let id = format!("trickle-{sent}");
            router.assign_unflushed(&get(&id)).await;
            ids.push(id);
            sent += 1;
        }
        router.flush().await;
        if Instant::now() >= look {
            look += Duration::from_millis(100);
            if left.is_none() && lanes_active(&w).await == 1.0 {
                left = Some((t0.elapsed(), sent));
            }
            if left.is_some() && queue_members(monitor).await == 1 {
                break;
            }
        }
        assert!(
            t1.elapsed() < Duration::from_secs(120),
            "the leaving lane was never released: {sent} trickled, left at {left:?}; {}",
            state(&w, monitor, &router).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let end = Instant::now() + Duration::from_secs(60);
    while router.seen.count(RESULT) < before + ids.len() {
        assert!(
            Instant::now() < end,
            "{} assignments, not all answered: {}",
            ids.len(),
            state(&w, monitor, &router).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    answered_once(&router, &ids);
    eprintln!(
        "lanes: load of 20000 ({OUTSTANDING} unanswered at a time) answered in {load:?}, the second lane in at {joined:?}; it left at {:?} after {} trickled, released by the broker after {sent}",
        left.map(|l| l.0),
        left.map_or(0, |l| l.1)
    );
    // Every message the server routes to the leaving lane after its UNSUB (at least 4096)
    // is a trickled one.
    assert!(sent > 4096, "the leave took its allowance: {sent} trickled");
    let m = w.metrics().await;
    assert_eq!(metric_value(&m, "worker_intake_dropped_total"), 0.0);
    assert_eq!(
        lanes_active(&w).await,
        1.0,
        "the trickle did not bring it back"
    );
}

fn approval(id: &str) -> Value {
    assignment(
        id,
        "t",
        json!({"type":"human.approval","prompt":"ok?","timeout_ms": 20_000,
        "approvers":["user1@example.com"]}),
    )
}

#[tokio::test]
async fn a_full_lane_hands_to_another_queue_and_4002_means_every_queue_is_full() {
    // Two threads, one lane in the group; each thread holds 1 running + 1 in its fair
    // queue + 2 queued: 8 held, and only what is beyond them is refused (without the
    // hand-over the one lane would refuse from its fifth).
    let (_n, _w, router) = setup(
        "core",
        &[
            "--cpu-pool-size=2",
            "--max-in-flight=1",
            "--queue-capacity=2",
        ],
    )
    .await;
    // Spaced, so each thread has moved what it can hold out of its queue before the next.
    for i in 0..12 {
        router.assign(&approval(&format!("held-{i}"))).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = |router: &Router| {
        router
            .seen
            .on(RESULT)
            .into_iter()
            .filter(|r| r["error"]["code"] == 4002)
            .count()
    };
    let end = Instant::now() + Duration::from_secs(10);
    while refused(&router) < 4 {
        assert!(Instant::now() < end, "{:?}", router.seen.summary());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(refused(&router), 4, "{:?}", router.seen.summary());
    let accepted = router
        .seen
        .on(ACK)
        .into_iter()
        .filter(|a| a["status"] == "accepted")
        .filter(|a| {
            a["assignment_id"]
                .as_str()
                .is_some_and(|i| i.starts_with("held-"))
        })
        .count();
    // One running on each thread, acked; the queued ones are acked when they start.
    assert_eq!(accepted, 2, "{:?}", router.seen.summary());
}
