//! A probe, not a test of the suite: `answers.sh` copies it into tests/ for one run.
//! A 1 MB non-UTF-8 payload (its DLQ entry, base64, is over 1 MiB), in JetStream mode:
//! prints, after 8 s, what the Router saw and the worker's log lines above INFO.
use std::time::Duration;

use beamline_testkit::prelude::*;

#[tokio::test]
async fn probe_a_binary_payload_near_max_payload() {
    let (_n, w, router) = setup("jetstream", &[]).await;
    router.publish(ASSIGN, vec![0xffu8; 1_000_000]).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    eprintln!("seen {:?}", router.seen.summary());
    for d in router.seen.on(DLQ) {
        let keys: Vec<&String> = d.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        eprintln!("DLQ entry keys {keys:?} truncated {}", d["truncated"]);
    }
    for line in w.logs().lines().filter(|l| !l.contains("\"INFO\"")) {
        eprintln!("{}", &line[..line.len().min(300)]);
    }
}
