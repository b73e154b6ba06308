//! `--max-cpu-time-ms` accounts the CPU time an assignment really uses (issue 13 item 6):
//! the thread CPU clock around its polls on its CPU thread, not the wall time of a poll;
//! plus what the GPU pool (and the IO pool) spent for it on their threads, reported with
//! their answers. Against a real nats-server and the worker binary, as the other e2e tests.

use std::time::{Duration, Instant};

use beamline_gpu::{Activation, Layer, Model};
use beamline_testkit::metrics::metric_sum;
use beamline_testkit::prelude::*;
use serde_json::{json, Value};

/// This thread's CPU time, ms.
fn thread_cpu_ms() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

/// `worker_task_cpu_time_ms`: (sum in ms, count).
async fn cpu_histogram(worker: &Worker) -> (f64, f64) {
    let m = worker.metrics().await;
    (
        metric_sum(&m, "worker_task_cpu_time_ms_sum", &[]),
        metric_sum(&m, "worker_task_cpu_time_ms_count", &[]),
    )
}

/// A task whose polls wait without using the CPU — here SQLite's busy handler sleeping
/// in the query's step while another connection holds the database's exclusive lock,
/// 50 ms an attempt, attempt after attempt — is not stopped by a `--max-cpu-time-ms`
/// smaller than the time it waited. Before, a poll's wall time was its "CPU time": the
/// attempts' blocked polls (two of them fit before the 90 ms deadline) added up past
/// 90 ms and the task ended with 5002 "CPU time limit exceeded". Now it ends with its own
/// answer (the database is busy: 2002, retries exhausted at the wall-clock deadline,
/// which is unchanged), and its CPU time is small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_waits_in_its_polls_is_not_stopped_by_the_cpu_limit() {
    let nats = Nats::start();
    let b = Worker::builder(&nats.url()).args(&["--consumer=core", "--max-cpu-time-ms=90"]);
    let db_path = b.sql_root().join("db.sqlite");
    let db = rusqlite::Connection::open(&db_path).expect("db");
    db.execute_batch("CREATE TABLE x(a); INSERT INTO x VALUES (1);")
        .expect("schema");
    let worker = b.start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    let (sum0, n0) = cpu_histogram(&worker).await;
    // Readers wait for the writer's exclusive lock (rollback journal) until it is dropped.
    db.execute_batch("BEGIN EXCLUSIVE;").expect("lock");
    let started = Instant::now();
    let mut a = assignment(
        "wait-1",
        "t",
        json!({"type":"sql.query","connection_string":"sqlite://db.sqlite",
               "query":"SELECT a FROM x"}),
    );
    a["retry_config"] = json!({"max_attempts":20,"initial_backoff_ms":1});
    router.assign(&a).await;
    let r = router.result("wait-1").await;
    let waited = started.elapsed();
    db.execute_batch("ROLLBACK;").expect("unlock");
    assert_result_shape(&r);
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !msg.contains("CPU time"),
        "waiting for a lock is not CPU time: {r}\n{}",
        worker.logs()
    );
    assert_eq!(r["error"]["code"], 2002, "the database's own answer: {r}");
    assert!(waited >= Duration::from_millis(90), "{waited:?}");
    let (sum1, n1) = cpu_histogram(&worker).await;
    assert_eq!(n1 - n0, 1.0, "one task observed");
    assert!(
        sum1 - sum0 < 50.0,
        "CPU time of a task that slept in its polls: {} ms",
        sum1 - sum0
    );
    // With the lock gone the same query succeeds under the same limit.
    router
        .assign(&assignment(
            "wait-2",
            "t",
            json!({"type":"sql.query","connection_string":"sqlite://db.sqlite",
                   "query":"SELECT a FROM x"}),
        ))
        .await;
    let r = router.result("wait-2").await;
    assert_eq!(r["status"], "success", "{r}");
}

const WIDTH: usize = 16;
const HIDDEN: usize = 1536;
const ROWS: usize = 512;

/// 16 → 1536 → 1536 → 1536 (relu) → 4: about 2.4 G multiply-adds for `ROWS` rows on the
/// GPU pool's CPU fallback, while the CPU thread only parses 8 k inputs and writes 2 k
/// outputs (so its own polls, which were all that counted before, are a small part).
fn heavy_model() -> Model {
    let layer = |i: usize, o: usize, act| {
        let w: Vec<f32> = (0..i * o)
            .map(|k| ((k % 17) as f32 - 8.0) / (64.0 * i as f32))
            .collect();
        Layer::new(i, o, w, vec![0.01; o], act).expect("layer")
    };
    Model::new(vec![
        layer(WIDTH, HIDDEN, Activation::Relu),
        layer(HIDDEN, HIDDEN, Activation::Relu),
        layer(HIDDEN, HIDDEN, Activation::Relu),
        layer(HIDDEN, 4, Activation::None),
    ])
    .expect("model")
}

fn inputs() -> Vec<f32> {
    (0..ROWS * WIDTH).map(|k| (k % 9) as f32 * 0.25).collect()
}

fn inference_job(inputs: &[f32]) -> Value {
    let rows: Vec<&[f32]> = inputs.chunks(WIDTH).collect();
    json!({"type":"ai.inference","model":"models/heavy.safetensors","inputs":rows,
           "device":"cpu"})
}

/// The CPU time the GPU pool's CPU fallback spends on an `ai.inference` batch (on its
/// slot thread and its GEMM threads, not the assignment's CPU thread) is the
/// assignment's: `worker_task_cpu_time_ms` shows at least half of what the same forward
/// pass costs in this process (thread CPU clock). Before, only the CPU thread's polls
/// counted: parsing the inputs and writing the outputs, a small fraction of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_spent_on_the_gpu_pool_counts_for_the_assignment() {
    let model = heavy_model();
    let x = inputs();
    // The reference: the same forward pass on this thread.
    let t0 = thread_cpu_ms();
    let want = model.forward_cpu(&x, ROWS).expect("forward");
    let reference_ms = thread_cpu_ms() - t0;
    assert!(
        reference_ms > 20.0,
        "the model is heavy enough: {reference_ms} ms"
    );

    let nats = Nats::start();
    let worker = Worker::builder(&nats.url())
        .args(&["--consumer=core"])
        .start();
    let p = worker.fs_root.join("acme/models/heavy.safetensors");
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, model.to_safetensors()).expect("model file");
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    let (sum0, n0) = cpu_histogram(&worker).await;
    router
        .assign(&assignment("heavy-1", "acme", inference_job(&x)))
        .await;
    let r = router.result("heavy-1").await;
    assert_eq!(r["status"], "success", "{r}\n{}", worker.logs());
    assert_eq!(r["result"]["outputs"][0].as_array().map(Vec::len), Some(4));
    assert_eq!(
        r["result"]["outputs"][ROWS - 1][0]
            .as_f64()
            .map(|v| v as f32),
        Some(want[(ROWS - 1) * 4]),
        "{}",
        r["result"]["outputs"][ROWS - 1]
    );
    let (sum1, n1) = cpu_histogram(&worker).await;
    assert_eq!(n1 - n0, 1.0);
    let used = sum1 - sum0;
    assert!(
        used >= reference_ms / 2.0,
        "the task's CPU time ({used:.1} ms) includes the GPU pool's batch (the forward \
         pass alone: {reference_ms:.1} ms here)"
    );
    eprintln!("ai.inference: task CPU {used:.1} ms, forward pass here {reference_ms:.1} ms");
}

/// The limit holds on that total: a task whose GPU-pool work uses more CPU time than
/// `--max-cpu-time-ms` is answered 5002 "CPU time limit exceeded". The wall-clock
/// deadline is clamped to the same limit, so this can only be seen when the task's CPU
/// time exceeds its wall time: the pool's two GEMM threads running in parallel. The limit
/// is picked between a first run's measured CPU and wall time (CPU above wall by a
/// quarter at least). Ignored by default: it needs two idle cores, which the shared
/// 2-vCPU CI host does not have (measured there: CPU 184–221 ms against 226–395 ms of
/// wall). Run: `cargo test --test cpu_time -- --ignored`. The enforcement of charged
/// time itself is checked deterministically by the unit test
/// `runtime::cputime::tests::work_charged_from_other_threads_counts_and_is_enforced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs two idle cores (CPU time above wall time)"]
async fn cpu_spent_on_the_gpu_pool_is_held_to_the_limit() {
    let model = heavy_model();
    let x = inputs();
    let nats = Nats::start();
    let mut measured = None;
    for round in 0..3 {
        let worker = Worker::builder(&nats.url())
            .args(&["--consumer=core"])
            .start();
        let p = worker.fs_root.join("acme/models/heavy.safetensors");
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, model.to_safetensors()).expect("model file");
        let router = Router::connect(&nats.url()).await;
        ready(&router).await;
        // Warm: the model parsed and cached, the pool's threads started.
        let id = format!("warm-{round}");
        router
            .assign(&assignment(&id, "acme", inference_job(&x[..WIDTH])))
            .await;
        assert_eq!(router.result(&id).await["status"], "success");
        let (sum0, _) = cpu_histogram(&worker).await;
        let id = format!("calibrate-{round}");
        let t = Instant::now();
        router
            .assign(&assignment(&id, "acme", inference_job(&x)))
            .await;
        assert_eq!(router.result(&id).await["status"], "success");
        let wall_ms = t.elapsed().as_secs_f64() * 1e3;
        let cpu_ms = cpu_histogram(&worker).await.0 - sum0;
        eprintln!("round {round}: task CPU {cpu_ms:.1} ms, wall {wall_ms:.1} ms");
        if cpu_ms > 1.25 * wall_ms {
            measured = Some((cpu_ms, wall_ms));
            break;
        }
    }
    let Some((cpu_ms, wall_ms)) = measured else {
        panic!("the GPU pool's two GEMM threads never ran in parallel here (see the rounds)");
    };
    let limit = ((cpu_ms + wall_ms) / 2.0) as u64;
    let worker = Worker::builder(&nats.url())
        .args(&["--consumer=core", &format!("--max-cpu-time-ms={limit}")])
        .start();
    let p = worker.fs_root.join("acme/models/heavy.safetensors");
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, model.to_safetensors()).expect("model file");
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    router
        .assign(&assignment("warm", "acme", inference_job(&x[..WIDTH])))
        .await;
    assert_eq!(router.result("warm").await["status"], "success");
    router
        .assign(&assignment("over-1", "acme", inference_job(&x)))
        .await;
    let r = router.result("over-1").await;
    assert_result_shape(&r);
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(r["error"]["code"], 5002, "{r}");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("CPU time"),
        "limit {limit} ms, calibrated CPU {cpu_ms:.1} / wall {wall_ms:.1} ms: {r}"
    );
}

/// What the accounting works on for the hot path: `fs.get` tasks of a 1 KiB file (inline
/// on the CPU thread), 64 at a time. Prints polls per task (`worker_task_polls_total` /
/// tasks: the thread CPU clock is read at most twice a poll) and the mean CPU time per
/// task; checks that every task was observed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_get_tasks_are_each_accounted_once() {
    const TASKS: usize = 512;
    let nats = Nats::start();
    let worker = Worker::builder(&nats.url())
        .args(&["--consumer=core"])
        .start();
    let p = worker.fs_root.join("acme/f.bin");
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &p,
        (0..1024u32).map(|i| (i % 256) as u8).collect::<Vec<u8>>(),
    )
    .expect("file");
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    let m = worker.metrics().await;
    let (polls0, (sum0, n0)) = (
        metric_sum(&m, "worker_task_polls_total", &[]),
        cpu_histogram(&worker).await,
    );
    for chunk in (0..TASKS).collect::<Vec<_>>().chunks(64) {
        for i in chunk {
            let a = assignment(
                &format!("get-{i}"),
                "acme",
                json!({"type":"fs.get","path":"f.bin"}),
            );
            router.assign(&a).await;
        }
        for i in chunk {
            let r = router.result(&format!("get-{i}")).await;
            assert_eq!(r["status"], "success", "{r}");
        }
    }
    let m = worker.metrics().await;
    let polls = metric_sum(&m, "worker_task_polls_total", &[]) - polls0;
    let (sum1, n1) = cpu_histogram(&worker).await;
    assert_eq!(n1 - n0, TASKS as f64, "each task observed once");
    eprintln!(
        "fs.get: {:.2} polls per task, {:.1} µs of CPU time per task (mean of {TASKS})",
        polls / TASKS as f64,
        (sum1 - sum0) * 1e3 / TASKS as f64
    );
}
