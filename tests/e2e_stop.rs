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
