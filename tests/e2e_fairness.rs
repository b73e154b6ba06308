//! Load held (issue 5): one tenant's flood does not starve another's tasks; a tenant over
//! `--tenant-rate-limit` gets 2004 and one within it succeeds; a flood of large
//! assignments keeps the worker under `--max-memory-mb` (core: 4002 for what does not fit,
//! JetStream: nothing lost). Real nats-server, real HTTP upstream, the worker binary.
//!
//! Figures are printed as one `fairness: …` / `flood: …` line each under `--nocapture`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use beamline_testkit::http_server::Scripted;
use beamline_testkit::metrics::metric_value;
use beamline_testkit::prelude::*;
use futures::StreamExt;
use serde_json::{json, Value};

/// One result as seen on the wire: when it arrived, its status and error code (0: none).
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    status: String,
    code: u64,
    /// Hash of the raw body: a re-publish must be the same bytes.
    body: u64,
}

/// Every result on `caf.exec.result.v1`, by assignment id, with its arrival time. Keeps
/// only what the checks need, so a flood of tens of thousands stays cheap to hold.
#[derive(Clone, Default)]
struct Results {
    by_id: Arc<Mutex<HashMap<String, Vec<Seen>>>>,
}

impl Results {
    async fn listen(client: &async_nats::Client) -> Results {
        let r = Results::default();
        let mut sub = client.subscribe(RESULT).await.expect("subscribe");
        client.flush().await.expect("flush");
        let by_id = r.by_id.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let at = Instant::now();
                let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                let Some(id) = v["assignment_id"].as_str() else {
                    continue;
                };
                let seen = Seen {
                    at,
                    status: v["status"].as_str().unwrap_or("").to_owned(),
                    code: v["error"]["code"].as_u64().unwrap_or(0),
                    body: {
                        use std::hash::{Hash, Hasher};
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        m.payload.hash(&mut h);
                        h.finish()
                    },
                };
                by_id
                    .lock()
                    .expect("lock")
                    .entry(id.to_owned())
                    .or_default()
                    .push(seen);
            }
        });
        r
    }

    fn snapshot(&self) -> HashMap<String, Vec<Seen>> {
        self.by_id.lock().expect("lock").clone()
    }

    /// Ids starting with `prefix` that have at least one result.
    fn answered(&self, prefix: &str) -> usize {
        self.by_id
            .lock()
            .expect("lock")
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count()
    }

    /// Waits until `n` ids starting with `prefix` have a result; false on timeout.
    async fn wait_answered(&self, prefix: &str, n: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.answered(prefix) < n {
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// A slow dependency (kit's `Scripted::slow`: `200 {}` after `delay`) that holds a worker
/// slot for that long per task; its URL.
async fn slow_upstream(delay: Duration) -> String {
    Scripted::slow(delay).await.url_for("/slow")
}

fn http_get_job(url: &str) -> Value {
    json!({"type": "http.request", "method": "GET", "url": url})
}

/// Tenant `flood` queues `FLOOD` slow tasks (100 ms upstream each, 4 slots: a 5 s backlog),
/// then tenant `quiet` sends `QUIET`. The quiet tenant's tasks take turns with the flood's
/// instead of waiting behind it: all done within `BOUND`, while most of the flood is not.
async fn a_flood_does_not_starve_a_quiet_tenant(mode: &str) {
    const FLOOD: usize = 200;
    const QUIET: usize = 5;
    const BOUND: Duration = Duration::from_secs(2);
    let (_n, _w, router) = setup(
        mode,
        &["--cpu-pool-size=1", "--max-in-flight=4", "--io-pool-size=1"],
    )
    .await;
    let results = Results::listen(&router.client).await;
    let url = slow_upstream(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    for i in 0..FLOOD {
        let a = assignment(&format!("{mode}-flood-{i}"), "flood", http_get_job(&url));
        router.assign_unflushed(&a).await;
    }
    router.flush().await;
    // Let the worker take the flood in before the quiet tenant shows up behind it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent_quiet = Instant::now();
    for i in 0..QUIET {
        let a = assignment(&format!("{mode}-quiet-{i}"), "quiet", http_get_job(&url));
        router.assign(&a).await;
    }
    assert!(
        results
            .wait_answered(&format!("{mode}-quiet-"), QUIET, Duration::from_secs(30))
            .await,
        "the quiet tenant's tasks were not all answered within 30 s"
    );
    let snap = results.snapshot();
    let quiet_done = (0..QUIET)
        .map(|i| snap[&format!("{mode}-quiet-{i}")][0].clone())
        .max_by_key(|s| s.at)
        .expect("quiet results");
    let flood_done_by_then = snap
        .iter()
        .filter(|(k, v)| k.starts_with(&format!("{mode}-flood-")) && v[0].at <= quiet_done.at)
        .count();
    let quiet_latency = quiet_done.at - sent_quiet;
    eprintln!(
        "fairness ({mode}): {QUIET} quiet tasks done {quiet_latency:?} after they were sent \
         (flood of {FLOOD} started {:?} before); {flood_done_by_then} of {FLOOD} flood tasks done by then",
        sent_quiet - t0
    );
    for i in 0..QUIET {
        let s = &snap[&format!("{mode}-quiet-{i}")];
        assert_eq!((s[0].status.as_str(), s.len()), ("success", 1), "{s:?}");
    }
    assert!(
        quiet_latency < BOUND,
        "the quiet tenant waited {quiet_latency:?} behind the flood (bound {BOUND:?})"
    );
    assert!(
        flood_done_by_then < FLOOD / 2,
        "the quiet tenant finished only after {flood_done_by_then} of {FLOOD} flood tasks"
    );
}

#[tokio::test]
async fn a_flooding_tenant_does_not_starve_a_quiet_one_core() {
    a_flood_does_not_starve_a_quiet_tenant("core").await;
}

#[tokio::test]
async fn a_flooding_tenant_does_not_starve_a_quiet_one_jetstream() {
    a_flood_does_not_starve_a_quiet_tenant("jetstream").await;
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_2004_and_within_it_succeeds() {
    const RATE: f64 = 10.0;
    const BURST: usize = 5;
    const SENT: usize = 20;
    let nats = Nats::start();
    let b = Worker::builder(&nats.url()).args(&[
        "--consumer=core",
        "--tenant-rate-limit=10",
        "--tenant-rate-burst=5",
    ]);
    for t in ["busy", "other"] {
        std::fs::create_dir_all(b.fs_root().join(t)).expect("tenant dir");
        std::fs::write(b.fs_root().join(t).join("in.txt"), "hello").expect("file");
    }
    let _w = b.start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    let job = json!({"type": "fs.get", "path": "/in.txt"});

    // A burst of SENT at once: BURST pass, plus what refills (RATE/s) while they arrive.
    let t0 = Instant::now();
    for i in 0..SENT {
        router
            .assign(&assignment(&format!("rate-{i}"), "busy", job.clone()))
            .await;
    }
    for i in 0..3 {
        router
            .assign(&assignment(&format!("other-{i}"), "other", job.clone()))
            .await;
    }
    let mut by_status: HashMap<u64, Vec<Value>> = HashMap::new();
    for i in 0..SENT {
        let r = router.result(&format!("rate-{i}")).await;
        assert_result_shape(&r);
        by_status
            .entry(r["error"]["code"].as_u64().unwrap_or(0))
            .or_default()
            .push(r);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let ok = by_status.get(&0).map_or(0, Vec::len);
    let refused = by_status.remove(&2004).unwrap_or_default();
    let most = BURST + (RATE * elapsed).ceil() as usize;
    eprintln!(
        "rate: {SENT} sent in a burst to a tenant limited to {RATE}/s (burst {BURST}): \
         {ok} succeeded, {} refused with 2004, over {elapsed:.2} s",
        refused.len()
    );
    assert!(
        (BURST..=most).contains(&ok),
        "{ok} succeeded, expected {BURST}..={most}"
    );
    assert_eq!(
        ok + refused.len(),
        SENT,
        "only success or 2004: {by_status:?}"
    );
    for i in 0..3 {
        let r = router.result(&format!("other-{i}")).await;
        assert_eq!(r["status"], "success", "another tenant is not limited: {r}");
    }

    // The contract's shape of a quota refusal: error result, 2004, not retryable, rejected
    // ack with the same error, DLQ entry `quota_exceeded`, never executed.
    let r = &refused[0];
    let id = r["assignment_id"].as_str().expect("id").to_owned();
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error"]["retryable"], false, "2004 is never retried: {r}");
    assert_eq!(r["error_code"], "QUOTA_EXCEEDED", "{r}");
    assert_eq!(r["attempts"], 0, "{r}");
    assert_eq!(r["tenant_id"], "busy", "{r}");
    let msg = r["error"]["message"].as_str().expect("message");
    assert!(msg.contains("rate quota") && msg.contains("busy"), "{msg}");
    assert_eq!(r["error_message"], msg);
    let ack = router.ack(&id).await;
    assert_eq!(
        (ack["status"].as_str(), ack["error"]["code"].as_u64()),
        (Some("rejected"), Some(2004)),
        "{ack}"
    );
    let dlq = router.dlq(&id).await;
    assert_eq!(dlq["dlq_reason"], "quota_exceeded", "{dlq}");
    assert_eq!(dlq["assignment"]["assignment_id"], id.as_str(), "{dlq}");

    // Not remembered for dedupe: once the bucket has refilled, the same id runs.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = router.seen.for_id(RESULT, &id).len();
    router.assign(&assignment(&id, "busy", job.clone())).await;
    let end = Instant::now() + Duration::from_secs(10);
    let again = loop {
        if let Some(r) = router.seen.for_id(RESULT, &id).get(before) {
            break r.clone();
        }
        assert!(Instant::now() < end, "the retried id was never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(again["status"], "success", "{again}");

    // Within the rate (about 6.7/s against 10/s): every one succeeds.
    for i in 0..10 {
        let id = format!("paced-{i}");
        router.assign(&assignment(&id, "busy", job.clone())).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for i in 0..10 {
        let r = router.result(&format!("paced-{i}")).await;
        assert_eq!(r["status"], "success", "within the rate: {r}");
    }
}

/// (VmRSS, VmHWM) of a process in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits until the worker answers (an fs.get round-trips), on a bare client: the flood
/// tests keep no copy of acks and DLQ entries (each DLQ entry of a 4002 carries the whole
/// assignment).
async fn ready_on(client: &async_nats::Client, results: &Results) {
    let end = Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        let id = format!("ready-{n}");
        let a = assignment(&id, "flood", json!({"type": "fs.get", "path": "/in.txt"}));
        client
            .publish(ASSIGN, serde_json::to_vec(&a).expect("json").into())
            .await
            .expect("publish");
        client.flush().await.expect("flush");
        let wait = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < wait {
            if results.answered(&id) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(Instant::now() < end, "worker never answered");
    }
}

/// Samples a process's VmRSS every 50 ms until dropped; `peak()` is the largest seen.
struct RssSampler {
    peak: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            while let Some((rss, _)) = rss_kib(pid) {
                p.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        RssSampler { peak, task }
    }

    fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pool flags of a flood test: `default`, or `FLOOD_ARGS` when set (to reproduce the
/// findings in docs/RELIABILITY.md with other pool sizes).
fn pool_args(default: &str) -> Vec<String> {
    std::env::var("FLOOD_ARGS")
        .unwrap_or_else(|_| default.to_owned())
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// A `kib`-KiB assignment of tenant `flood` (padded with an ignored `metadata` object),
/// written without serde so that the test publishes faster than the worker can run them.
fn flood_body(i: usize, job: &str, pad: &str) -> bytes::Bytes {
    format!(
        r#"{{"version":"1","assignment_id":"flood-{i}","tenant_id":"flood","job":{job},"metadata":{{"pad":"{pad}"}}}}"#
    )
    .into()
}

const BUDGET_MB: u64 = 128;

/// A worker for a flood test: `--consumer=<mode>`, `--max-memory-mb=BUDGET_MB`, `pools`,
/// and tenant `flood`'s small `/in.txt` (what `ready_on` and the after-flood check read).
fn flood_worker(nats: &Nats, mode: &str, pools: &[String]) -> WorkerBuilder {
    let b = Worker::builder(&nats.url())
        .args(&[
            &format!("--consumer={mode}"),
            &format!("--max-memory-mb={BUDGET_MB}"),
        ])
        .args(&pools.iter().map(String::as_str).collect::<Vec<_>>());
    std::fs::create_dir_all(b.fs_root().join("flood")).expect("tenant dir");
    std::fs::write(b.fs_root().join("flood/in.txt"), "small").expect("file");
    b
}

/// A core-mode worker ready for a flood of 50 ms HTTP tasks: its broker, pid, a bare
/// client and the results it sees, its idle RSS, an RSS sampler, the flood's job (JSON
/// text) and `kib` KiB of padding.
struct CoreFlood {
    _nats: Nats,
    w: Worker,
    pid: u32,
    client: async_nats::Client,
    results: Results,
    idle: u64,
    sampler: RssSampler,
    job: String,
    pad: String,
}

impl CoreFlood {
    /// `pools` unless `FLOOD_ARGS` is set (see `pool_args`).
    async fn start(pools: &str, kib: usize) -> CoreFlood {
        let nats = Nats::start();
        let w = flood_worker(&nats, "core", &pool_args(pools)).start();
        let pid = w.pid().expect("worker pid");
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let results = Results::listen(&client).await;
        ready_on(&client, &results).await;
        let idle = rss_kib(pid).expect("rss").0;
        let sampler = RssSampler::start(pid);
        let url = slow_upstream(Duration::from_millis(50)).await;
        CoreFlood {
            _nats: nats,
            w,
            pid,
            client,
            results,
            idle,
            sampler,
            job: http_get_job(&url).to_string(),
            pad: "x".repeat(kib << 10),
        }
    }
}

/// After a flood, an fs.get of tenant `flood` with id `id` succeeds within 10 s (sent
/// again every 300 ms while the worker still refuses).
async fn assert_intake_resumes(client: &async_nats::Client, results: &Results, id: &str) {
    let a = assignment(id, "flood", json!({"type": "fs.get", "path": "/in.txt"}));
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        client
            .publish(ASSIGN, serde_json::to_vec(&a).expect("json").into())
            .await
            .expect("publish");
        client.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = results.snapshot().get(id).cloned().unwrap_or_default();
        if seen.iter().any(|s| s.status == "success") {
            break;
        }
        assert!(
            Instant::now() < end,
            "still refusing work after the flood: {seen:?}"
        );
    }
}

/// Core NATS: `FLOOD_N` (default 10 000) assignments of `FLOOD_KIB` KiB (default 8),
/// published at `FLOOD_RATE` per second (default 1 500), at a worker whose tasks take 50 ms
/// each (slow upstream) and whose pools hold about 1 600 (2 CPU threads × 32 running +
/// 512 queued + 256 waiting their turn): more arrive than the pools hold. The worker answers
/// what does not fit with 4002; its peak RSS (VmHWM, the kernel's high-water mark) stays
/// under `--max-memory-mb`; every assignment gets exactly one result, or is counted as
/// dropped when refusals back up past their byte bound (see the unpaced test below); and
/// once the flood is over it takes work again.
#[tokio::test]
async fn a_flood_of_large_assignments_stays_under_the_memory_budget_core() {
    let n = env_or("FLOOD_N", 10_000);
    let kib = env_or("FLOOD_KIB", 8);
    let rate = env_or("FLOOD_RATE", 1_500);
    let CoreFlood {
        _nats,
        w,
        pid,
        client,
        results,
        idle,
        sampler,
        job,
        pad,
    } = CoreFlood::start("--max-in-flight=32 --queue-capacity=512", kib).await;

    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for chunk in (0..n).collect::<Vec<_>>().chunks((rate / 100).max(1)) {
        tick.tick().await;
        for &i in chunk {
            client
                .publish(ASSIGN, flood_body(i, &job, &pad))
                .await
                .expect("publish");
        }
    }
    client.flush().await.expect("flush");
    let published = t0.elapsed();
    // Answered, or dropped by a lane over its refusal byte bound (counted; only when the
    // worker refuses slower than they come, e.g. on a loaded machine).
    let end = Instant::now() + Duration::from_secs(60);
    let dropped = loop {
        let dropped = metric_value(&w.metrics().await, "worker_intake_dropped_total") as usize;
        if results.answered("flood-") + dropped >= n || Instant::now() > end {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let done = t0.elapsed();
    let (rss, peak, t) = after_flood(pid, &sampler, &results, n).await;
    eprintln!(
        "flood (core): {n} × {kib} KiB ({} MiB) published in {published:.2?} (paced at {rate}/s), \
         all answered or dropped ({dropped}) in {done:.2?}; first results by code {:?}, {} re-published copies; RSS \
         idle {} MiB, peak {} MiB (VmHWM), after {} MiB; budget {BUDGET_MB} MiB",
        (n * kib) >> 10,
        t.codes,
        t.republished,
        idle >> 10,
        peak >> 10,
        rss >> 10
    );
    assert_no_two_different(&t);
    assert_eq!(
        t.missing.len(),
        dropped,
        "every assignment answered once or counted as dropped"
    );
    assert_eq!(t.republished, 0, "core mode publishes each result once");
    let codes = t.codes;
    assert!(
        codes.keys().all(|c| [0, 4002].contains(c)),
        "only success or 4002 expected: {codes:?}"
    );
    assert!(
        codes.get(&4002).is_some_and(|&r| r > 0),
        "the flood never overloaded the worker, so it tested nothing: {codes:?}"
    );
    assert_under_budget(peak);
    // Intake resumes: a new assignment runs.
    assert_intake_resumes(&client, &results, "after-flood").await;
    drop(w);
}

/// Core NATS, unpaced (F6, issue 13 item 7): 20 000 × 8 KiB published as fast as the
/// client can, faster than the worker can refuse them. Each lane holds what it took and
/// has not answered within its byte bound (an eighth of `--max-memory-mb`), and its client
/// buffers are sized from it; what does not fit is dropped like a slow consumer's messages
/// and counted in `worker_intake_dropped_total`, which health shows (`intake`). Peak RSS
/// stays under the budget; every assignment is answered once or counted as dropped; no
/// id gets two different results; intake resumes after.
#[tokio::test]
async fn an_unpaced_core_flood_stays_under_the_memory_budget() {
    let n = env_or("FLOOD_N", 20_000);
    let kib = env_or("FLOOD_KIB", 8);
    let CoreFlood {
        _nats,
        w,
        pid,
        client,
        results,
        idle,
        sampler,
        job,
        pad,
    } = CoreFlood::start("--max-in-flight=32 --queue-capacity=256", kib).await;

    let t0 = Instant::now();
    for i in 0..n {
        client
            .publish(ASSIGN, flood_body(i, &job, &pad))
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    let published = t0.elapsed();
    // Health says assignments were dropped (the intake indicator, for 10 s after a drop).
    let mut health_named_intake = false;
    let end = Instant::now() + Duration::from_secs(90);
    let dropped = loop {
        let m = w.metrics().await;
        let dropped = metric_value(&m, "worker_intake_dropped_total") as usize;
        if !health_named_intake && dropped > 0 {
            let (status, _, body) = http_get(w.health_port, "/_health").await;
            health_named_intake = status == 503 && body.contains("\"intake\"");
        }
        if results.answered("flood-") + dropped >= n || Instant::now() > end {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let done = t0.elapsed();
    let (rss, peak, t) = after_flood(pid, &sampler, &results, n).await;
    eprintln!(
        "flood (core, unpaced): {n} × {kib} KiB ({} MiB) published in {published:.2?}; answered {} \
         + dropped {dropped} in {done:.2?}; first results by code {:?}; RSS idle {} MiB, peak {} MiB \
         (VmHWM), after {} MiB; budget {BUDGET_MB} MiB",
        (n * kib) >> 10,
        n - t.missing.len(),
        t.codes,
        idle >> 10,
        peak >> 10,
        rss >> 10
    );
    assert_no_two_different(&t);
    assert_eq!(t.republished, 0, "core mode publishes each result once");
    assert_eq!(
        n - t.missing.len() + dropped,
        n,
        "every assignment answered once or counted as dropped"
    );
    assert!(
        dropped > 0,
        "the flood was absorbed whole, so it tested nothing"
    );
    assert!(health_named_intake, "health named the dropped intake");
    assert_under_budget(peak);
    // Intake resumes: a new assignment runs.
    assert_intake_resumes(&client, &results, "after-unpaced").await;
    drop(w);
}

/// JetStream: `FLOOD_N` (default 10 000) assignments of `FLOOD_KIB` KiB (default 8) are
/// stored in the stream while the worker is down (kill -9); then it starts, with its default
/// pools, facing the whole backlog: ten times what its intake slots hold (the pools would
/// take 4 096; the 128 MiB budget allows 1 024, one per 128 KiB). It pulls only as slots free
/// up: peak RSS (VmHWM) under `--max-memory-mb`, every assignment exactly one result (a
/// byte-identical re-publish allowed), all successes: nothing lost or refused.
#[tokio::test]
async fn a_flood_of_large_assignments_stays_under_the_memory_budget_jetstream() {
    let n = env_or("FLOOD_N", 10_000);
    let kib = env_or("FLOOD_KIB", 8);
    let nats = Nats::start();
    let pools = pool_args("");
    let mut w = flood_worker(&nats, "jetstream", &pools).start();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let results = Results::listen(&client).await;
    // The worker creates the stream; then it goes away and the backlog builds up.
    ready_on(&client, &results).await;
    w.kill9();
    let job = json!({"type": "fs.get", "path": "/in.txt"}).to_string();
    let pad = "x".repeat(kib << 10);
    let js = async_nats::jetstream::new(client.clone());
    let t0 = Instant::now();
    let mut pending = Vec::with_capacity(1024);
    for i in 0..n {
        pending.push(
            js.publish(ASSIGN, flood_body(i, &job, &pad))
                .await
                .expect("publish"),
        );
        if pending.len() == pending.capacity() {
            for p in pending.drain(..) {
                p.await.expect("stored in the stream");
            }
        }
    }
    for p in pending {
        p.await.expect("stored in the stream");
    }
    let published = t0.elapsed();

    let t1 = Instant::now();
    w.restart();
    let pid = w.pid().expect("worker pid");
    let sampler = RssSampler::start(pid);
    results
        .wait_answered("flood-", n, Duration::from_secs(60))
        .await;
    let done = t1.elapsed();
    let (rss, peak, t) = after_flood(pid, &sampler, &results, n).await;
    let redeliveries = w
        .metrics()
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix("worker_jetstream_redeliveries_total ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    eprintln!(
        "flood (jetstream): {n} × {kib} KiB ({} MiB) stored in the stream in {published:.2?}; \
         a restarted worker answered all in {done:.2?}; first results by code {:?}, {} \
         re-published copies (byte-identical), {redeliveries} redeliveries; RSS peak {} MiB \
         (VmHWM), after {} MiB; budget {BUDGET_MB} MiB",
        (n * kib) >> 10,
        t.codes,
        t.republished,
        peak >> 10,
        rss >> 10
    );
    assert_one_result_each(&t);
    let codes = t.codes;
    assert_eq!(codes.get(&0), Some(&n), "all succeed: {codes:?}");
    assert_under_budget(peak);
}

/// What came back for `flood-0` … `flood-<n-1>`.
#[derive(Debug, Default)]
struct Tally {
    /// First result of each id, by error code (0: success).
    codes: HashMap<u64, usize>,
    /// Ids with no result.
    missing: Vec<String>,
    /// Extra copies that are the same bytes as the first (allowed: a re-publish).
    republished: usize,
    /// Ids with two different results (never allowed).
    different: Vec<String>,
}

fn tally(results: &Results, n: usize) -> Tally {
    let snap = results.snapshot();
    let mut t = Tally::default();
    for i in 0..n {
        let id = format!("flood-{i}");
        let Some(r) = snap.get(&id) else {
            t.missing.push(id);
            continue;
        };
        *t.codes.entry(r[0].code).or_default() += 1;
        t.republished += r.len() - 1;
        if r.iter().any(|s| s.body != r[0].body) {
            t.different.push(id);
        }
    }
    t
}

fn assert_one_result_each(t: &Tally) {
    assert!(
        t.missing.is_empty(),
        "no result for {:?}",
        &t.missing[..t.missing.len().min(10)]
    );
    assert_no_two_different(t);
}

/// No id got two different results (a re-publish must be the same bytes).
fn assert_no_two_different(t: &Tally) {
    assert!(
        t.different.is_empty(),
        "two different results for {:?}",
        &t.different[..t.different.len().min(10)]
    );
}

/// The worker's peak RSS (KiB) stayed under `--max-memory-mb`.
fn assert_under_budget(peak: u64) {
    assert!(
        peak < BUDGET_MB << 10,
        "peak RSS {} MiB over the {BUDGET_MB} MiB budget",
        peak >> 10
    );
}

/// After a flood: waits 500 ms (duplicates, if any, arrive late); then the worker's RSS
/// now (KiB), its peak (the sampler's, or VmHWM when higher) and the tally of `flood-*`.
async fn after_flood(
    pid: u32,
    sampler: &RssSampler,
    results: &Results,
    n: usize,
) -> (u64, u64, Tally) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss, hwm) = rss_kib(pid).expect("rss");
    (rss, sampler.peak().max(hwm), tally(results, n))
}
