//! Publishing the worker's messages: acks, results and DLQ entries (through JetStream
//! with `Nats-Msg-Id` where a stream keeps them), approval requests and heartbeats.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::{Client, Subject};
use bytes::Bytes;

use crate::config::Subjects;
use crate::telemetry::Metrics;

use super::{BoxError, TransportError};

/// Which kind of message is published (also the `Nats-Msg-Id` prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ack,
    Result,
    Dlq,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ack => "ack",
            Kind::Result => "result",
            Kind::Dlq => "dlq",
        }
    }
}

/// Publishes the worker's messages. In JetStream mode acks, results and DLQ entries go
/// through JetStream with `Nats-Msg-Id` and wait for the stream's publish-ack; plain
/// subscribers see them as core messages either way.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: Client,
    js: Option<jetstream::Context>,
    subjects: Subjects,
    /// The ack, result and DLQ subjects as NATS subjects (shared bytes: a publish clones a
    /// reference, where a `String` subject cost three copies per publish).
    outgoing: [Subject; 3],
    /// The server's `max_payload`, read from the connection at most once a second.
    max_payload: Arc<MaxPayload>,
    metrics: Arc<Metrics>,
}

/// The server's `max_payload` as last read, and when (ms since `since`). Reading it from
/// the client copies the whole server info (a dozen strings): it was a per-result cost.
#[derive(Debug)]
struct MaxPayload {
    since: Instant,
    bytes: AtomicUsize,
    read_at_ms: AtomicU64,
}

/// How long a read `max_payload` is used before it is read again (a reconnect may reach a
/// server with another limit).
const MAX_PAYLOAD_FRESH_MS: u64 = 1000;

/// Gives up on a publish after this long (the caller then naks or logs).
const PUBLISH_PATIENCE: Duration = Duration::from_secs(60);

impl Publisher {
    pub fn new(
        client: Client,
        js: Option<jetstream::Context>,
        subjects: Subjects,
        metrics: Arc<Metrics>,
    ) -> Self {
        let outgoing = [
            Subject::from(subjects.ack.as_str()),
            Subject::from(subjects.result.as_str()),
            Subject::from(subjects.dlq.as_str()),
        ];
        let max_payload = Arc::new(MaxPayload {
            since: Instant::now(),
            bytes: AtomicUsize::new(client.server_info().max_payload),
            read_at_ms: AtomicU64::new(0),
        });
        Publisher {
            client,
            js,
            subjects,
            outgoing,
            max_payload,
            metrics,
        }
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    fn subject(&self, kind: Kind) -> &Subject {
        match kind {
            Kind::Ack => &self.outgoing[0],
            Kind::Result => &self.outgoing[1],
            Kind::Dlq => &self.outgoing[2],
        }
    }

    /// Publishes and, in JetStream mode, waits until the stream stored it. Retries through
    /// NATS outages (with backoff) for up to a minute.
    pub async fn publish(
        &self,
        kind: Kind,
        msg_id: Option<&str>,
        body: Bytes,
    ) -> Result<(), TransportError> {
        let subject = self.subject(kind);
        // The retry schedule starts at the first failure: no clock read per publish.
        let mut retry: Option<(tokio::time::Instant, Duration)> = None;
        loop {
            let r = match (&self.js, msg_id) {
                // Boxed: inline, the stored publish's state (~1 KiB) would enlarge every
                // publish's future, in core mode too, where each task's future is copied
                // whole at each move (issue 12, seventh round).
                (Some(js), Some(id)) => {
                    Box::pin(stored(js, subject.clone(), kind, id, body.clone())).await
                }
                _ => self
                    .client
                    .publish(subject.clone(), body.clone())
                    .await
                    .map_err(BoxError::from),
            };
            let Err(e) = r else { return Ok(()) };
            self.metrics
                .publish_failures
                .with_label_values(&[kind.as_str()])
                .inc();
            let (deadline, delay) = retry.get_or_insert_with(|| {
                let now = tokio::time::Instant::now();
                (now + PUBLISH_PATIENCE, Duration::from_millis(50))
            });
            if tokio::time::Instant::now() + *delay > *deadline {
                let what = format!("publishing {} to {subject}", kind.as_str());
                return Err(TransportError::new(what, e));
            }
            tracing::warn!(kind = kind.as_str(), error = %e, "publish failed; retrying");
            tokio::time::sleep(*delay).await;
            *delay = (*delay * 2).min(Duration::from_secs(2));
        }
    }

    /// A core publish on any subject (approval requests, heartbeats).
    pub async fn publish_core(&self, subject: &str, body: Bytes) -> Result<(), TransportError> {
        self.client
            .publish(subject.to_owned(), body)
            .await
            .map_err(|e| TransportError::new(format!("publishing to {subject}"), e))
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The server's max_payload (bytes), for the size check of results: read from the
    /// connection at most once a second.
    pub fn max_payload(&self) -> usize {
        let m = &self.max_payload;
        let now_ms = m.since.elapsed().as_millis() as u64;
        let read_at = m.read_at_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(read_at) >= MAX_PAYLOAD_FRESH_MS {
            m.read_at_ms.store(now_ms, Ordering::Relaxed);
            let bytes = self.client.server_info().max_payload;
            m.bytes.store(bytes, Ordering::Relaxed);
            return bytes;
        }
        m.bytes.load(Ordering::Relaxed)
    }
}

/// One JetStream publish with its message id, waited for until the stream stored it.
async fn stored(
    js: &jetstream::Context,
    subject: Subject,
    kind: Kind,
    id: &str,
    body: Bytes,
) -> Result<(), BoxError> {
    let msg = jetstream::message::PublishMessage::build()
        .payload(body)
        .message_id(format!("{}:{id}", kind.as_str()));
    match js.send_publish(subject, msg).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(BoxError::from),
        Err(e) => Err(BoxError::from(e)),
    }
}
