//! A stop ends within the grace period whatever the broker does (issue 13 item 9): the
//! broker is killed first, then the worker gets SIGTERM; it must exit 0 within
//! `--shutdown-grace-ms` (plus process start-up slack), in both consumer modes, idle or
//! with work it can no longer hand back.

use std::time::{Duration, Instant};

use beamline_testkit::prelude::*;
use serde_json::json;

const GRACE_MS: u64 = 3_000;
/// What the process may take beyond the grace period: signal delivery, joining threads,
/// flushing logs, on a loaded 2-core CI machine.
const SLACK: Duration = Duration::from_millis(1_500);

async fn stop_with_the_broker_gone(mode: &str, busy: bool) {
    let mut nats = Nats::start();
    let mut worker = Worker::builder(&nats.url())
        .arg(&format!("--consumer={mode}"))
        .arg(&format!("--shutdown-grace-ms={GRACE_MS}"))
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    if busy {
        // Work the worker holds when the broker goes: 20 human approvals that nobody
        // answers (they wait up to their timeout, far past the grace period).
        for i in 0..20 {
            let a = assignment(
                &format!("stop-{mode}-{i}"),
                "t",
                json!({"type":"human.approval","prompt":"ok?","approvers":["a"],"timeout_ms":600_000}),
            );
            router.assign(&a).await;
        }
        router
            .seen
            .wait_count(ACK, 20, Duration::from_secs(15))
            .await;
    }
    nats.kill();
    // Let the worker notice (its reconnect attempts are running).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let status =
        worker.terminate(Duration::from_millis(GRACE_MS) + SLACK + Duration::from_secs(20));
    let took = t0.elapsed();
    let logs = worker.logs();
    let status = status
        .unwrap_or_else(|| panic!("{mode}: still running {took:?} after SIGTERM; log:\n{logs}"));
    assert!(
        took <= Duration::from_millis(GRACE_MS) + SLACK,
        "{mode}: took {took:?} to stop (grace {GRACE_MS} ms); log:\n{logs}"
    );
    assert!(
        status.success(),
        "{mode}: exit status {status:?}; log:\n{logs}"
    );
    assert!(logs.contains("worker stopped"), "{mode}: log:\n{logs}");
    if busy {
        // The 20 approvals were stopped at the end of the grace period: their answers
        // (core: 4002) or naks (JetStream) could not reach a broker; the log says so and
        // how many.
        let line = logs
            .lines()
            .find(|l| l.contains("could not be answered or handed back"))
            .unwrap_or_else(|| panic!("{mode}: the unanswered work is logged; log:\n{logs}"));
        assert!(line.contains("\"held\":20"), "{mode}: {line}");
    }
    eprintln!("{mode} busy={busy}: stopped in {took:?}");
}

#[tokio::test]
async fn core_idle_stops_within_grace_with_the_broker_gone() {
    stop_with_the_broker_gone("core", false).await;
}

#[tokio::test]
async fn jetstream_idle_stops_within_grace_with_the_broker_gone() {
    stop_with_the_broker_gone("jetstream", false).await;
}

#[tokio::test]
async fn core_busy_stops_within_grace_with_the_broker_gone() {
    stop_with_the_broker_gone("core", true).await;
}

#[tokio::test]
async fn jetstream_busy_stops_within_grace_with_the_broker_gone() {
    stop_with_the_broker_gone("jetstream", true).await;
}

/// SIGTERM, waited for off the async runtime; the exit status and how long it took.
async fn terminate(
    mut worker: Worker,
    wait: Duration,
) -> (Option<std::process::ExitStatus>, Duration, Worker) {
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let status = worker.terminate(wait);
        (status, t0.elapsed(), worker)
    })
    .await
    .expect("join")
}

/// At a stop, what has not started is handed back at once (core: refused 4002, retryable,
/// `attempts: 0`; JetStream: nak'ed, and the next instance runs it once) instead of being
/// started into a grace period that may end before it does (then run twice, or answered
/// 4002 after its side effect). What runs finishes within the grace period, and its result
/// reaches the broker before the process ends (core mode lost it: the lane's client was
/// not flushed before its thread's runtime ended).
#[tokio::test]
async fn at_a_stop_queued_work_is_handed_back_and_running_work_answered() {
    for mode in ["core", "jetstream"] {
        let nats = Nats::start();
        let worker = Worker::builder(&nats.url())
            .args(&[
                &format!("--consumer={mode}"),
                "--cpu-pool-size=1",
                "--max-in-flight=1",
                "--shutdown-grace-ms=8000",
            ])
            .start();
        let fs_root = worker.fs_root.clone();
        let router = Router::connect(&nats.url()).await;
        ready(&router).await;
        let running = format!("run-{mode}");
        let approval =
            json!({"type":"human.approval","prompt":"p","approvers":["a"],"timeout_ms":60000});
        router.assign(&assignment(&running, "t", approval)).await;
        router
            .seen
            .wait_for(APPROVAL_REQUEST, &running, Duration::from_secs(10))
            .await;
        let queued: Vec<String> = (0..3).map(|i| format!("q-{mode}-{i}")).collect();
        for id in &queued {
            let put = json!({"type":"fs.put","path":id,"content":"x"});
            router.assign(&assignment(id, "t", put)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The decision comes during the grace period.
        let client = router.client.clone();
        let decision = format!(r#"{{"assignment_id":"{running}","approver":"a","approved":true}}"#);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let _ = client.publish(APPROVAL_DECISION, decision.into()).await;
        });
        let (status, took, worker) = terminate(worker, Duration::from_secs(20)).await;
        let logs = worker.logs();
        assert!(
            status.is_some_and(|s| s.success()) && took < Duration::from_secs(8),
            "{mode}: {status:?} after {took:?}; log:\n{logs}"
        );
        let r = router.result(&running).await;
        assert_eq!(r["status"], "success", "{mode}: {r}");
        for id in &queued {
            assert!(!fs_root.join("t").join(id).exists(), "{mode}: {id} ran");
        }
        if mode == "core" {
            for id in &queued {
                let r = router.result(id).await;
                assert_eq!(
                    (
                        &r["error"]["code"],
                        &r["attempts"],
                        &r["error"]["retryable"]
                    ),
                    (&json!(4002), &json!(0), &json!(true)),
                    "{r}"
                );
                assert!(
                    r["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("not started")),
                    "{r}"
                );
            }
            continue;
        }
        for id in &queued {
            assert!(
                router.seen.for_id(RESULT, id).is_empty(),
                "{id} answered at the stop"
            );
        }
        // JetStream: the next instance gets them back and runs each once.
        let next = Worker::builder(&nats.url()).start();
        for id in &queued {
            let r = router.result(id).await;
            assert_eq!(r["status"], "success", "{r}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for id in &queued {
            assert_eq!(router.seen.for_id(RESULT, id).len(), 1, "{id}");
            assert!(next.fs_root.join("t").join(id).exists(), "{id}");
        }
    }
}

/// A JetStream worker that cannot reach NATS at start retries binding until it can; a
/// SIGTERM during that stops it. (A stop listener made afresh for each retry's sleep
/// missed a signal that came during a bind attempt, and the worker ran on until killed.)
#[tokio::test]
async fn sigterm_stops_a_worker_still_binding_jetstream() {
    let nobody = free_port();
    let worker = Worker::builder(&format!("nats://127.0.0.1:{nobody}"))
        .arg("--consumer=jetstream")
        .start();
    // Several bind attempts (each waits up to 1.5 s for the API) and sleeps between them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, took, worker) = terminate(worker, Duration::from_secs(10)).await;
    let logs = worker.logs();
    assert!(logs.contains("binding JetStream failed"), "log:\n{logs}");
    assert!(
        status.is_some_and(|s| s.success()) && took < Duration::from_secs(3),
        "{status:?} after {took:?}; log:\n{logs}"
    );
}
