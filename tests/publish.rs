//! The publisher against a real nats-server: the result size check uses the limit the
//! client itself enforces, from the moment the connection is up, and a message over that
//! limit fails at once instead of being retried for a minute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use beamline_testkit::metrics::metric_sum;
use beamline_testkit::prelude::*;
use beamline_worker::config::{Cli, Config};
use beamline_worker::telemetry::Metrics;
use beamline_worker::transport::{connect, Kind, Publisher, Role};
use bytes::Bytes;
use clap::Parser;

/// A server whose `max_payload` is not NATS's default, so a limit that was read from the
/// server is told apart from one that was assumed.
const SERVER_MAX_PAYLOAD: usize = 64 << 10;

fn small_payload_server(dir: &std::path::Path) -> Nats {
    let conf = dir.join("nats.conf");
    std::fs::write(&conf, format!("max_payload: {SERVER_MAX_PAYLOAD}\n")).expect("conf");
    Nats::start_with(&["-c", conf.to_str().expect("utf-8 path")])
}

/// The worker's own connection (made in the background, as at startup) and a publisher
/// made at once, before the server's INFO can have arrived.
async fn publisher(nats: &Nats) -> (Publisher, Arc<Metrics>) {
    let cli = Cli::try_parse_from([
        "beamline_worker".to_owned(),
        format!("--nats-url={}", nats.url()),
        "--consumer=core".to_owned(),
    ])
    .expect("flags");
    let cfg = Config::resolve(cli).expect("config");
    let metrics = Arc::new(Metrics::new());
    let client = connect(&cfg, metrics.clone(), Role::Control)
        .await
        .expect("connect");
    let publisher = Publisher::new(client, None, cfg.subjects.clone(), metrics.clone());
    (publisher, metrics)
}

#[tokio::test]
async fn the_size_limit_is_the_servers_as_soon_as_the_connection_is_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = small_payload_server(dir.path());
    let made = Instant::now();
    let (publisher, _) = publisher(&nats).await;
    let end = made + Duration::from_secs(10);
    while !publisher.is_connected() {
        assert!(Instant::now() < end, "connected within 10 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Asked at once, within the first second of the publisher: the limit read then was
    // kept for a second, and a connection made in the background had none yet (0, which
    // turned the check off).
    let first = publisher.max_payload();
    let asked_after = made.elapsed();
    assert_eq!(
        first, SERVER_MAX_PAYLOAD,
        "asked {asked_after:?} after the publisher was made"
    );
}

#[tokio::test]
async fn a_message_over_the_limit_fails_at_once_and_is_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = small_payload_server(dir.path());
    let (publisher, metrics) = publisher(&nats).await;
    let end = Instant::now() + Duration::from_secs(10);
    while !publisher.is_connected() {
        assert!(Instant::now() < end, "connected within 10 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let body = Bytes::from(vec![b'x'; SERVER_MAX_PAYLOAD + 1]);
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        publisher.publish(Kind::Result, None, body),
    )
    .await
    .expect("no retries for a message no retry can get through (it took a minute)");
    let err = r.expect_err("the client refuses it");
    assert!(
        format!("{err:#}").contains("publishing result"),
        "{err:#}, after {:?}",
        started.elapsed()
    );
    let text = metrics.render();
    assert_eq!(
        metric_sum(&text, "worker_publish_failures_total", &["kind=\"result\""]),
        1.0,
        "{text}"
    );
    // Under the limit it goes through.
    publisher
        .publish(
            Kind::Result,
            None,
            Bytes::from(vec![b'x'; SERVER_MAX_PAYLOAD - 64]),
        )
        .await
        .expect("under the limit");
}
