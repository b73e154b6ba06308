//! Publishing the worker's messages: acks, results and DLQ entries (through JetStream
//! with `Nats-Msg-Id` where a stream keeps them), approval requests and heartbeats.

use std::sync::Arc;
use std::time::Duration;

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
    metrics: Arc<Metrics>,
}

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
        Publisher {
            client,
            js,
            subjects,
            outgoing,
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
            // Over the limit the client checks, no retry can get it through.
            if is_over_max_payload(&*e) || tokio::time::Instant::now() + *delay > *deadline {
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

    /// Waits until what the client holds has reached the server (its PONG), at most
    /// `limit`; whether it did. The client's writer is a task of the runtime that made the
    /// connection: a lane's thread ends its runtime at stop, and a core publish not yet
    /// written then was lost (a result finished during the stop, the 4002 answers of what
    /// was queued).
    pub async fn flush(&self, limit: Duration) -> bool {
        self.is_connected()
            && matches!(
                tokio::time::timeout(limit, self.client.flush()).await,
                Ok(Ok(()))
            )
    }

    /// The largest message (bytes) the client lets through: the server's `max_payload`
    /// from its last INFO, NATS's default (1 MiB) before the first. The very value the
    /// client checks each publish against, so a result sized against it is never refused
    /// by the client. (It was read from the server info once a second; a connection made
    /// in the background had no info yet, its 0 was kept for that second, and results over
    /// the limit were retried for a minute, then dropped, instead of answered 2004.)
    pub fn max_payload(&self) -> usize {
        self.client.max_payload()
    }
}

/// Whether a publish failed because the message is larger than the connection allows.
fn is_over_max_payload(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(e) = e.downcast_ref::<async_nats::PublishError>() {
        return e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded;
    }
    if let Some(e) = e.downcast_ref::<jetstream::context::PublishError>() {
        return e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded;
    }
    false
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
