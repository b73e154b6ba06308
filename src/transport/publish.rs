//! Publishing the worker's messages: acks, results and DLQ entries (through JetStream
//! with `Nats-Msg-Id` where a stream keeps them), approval requests and heartbeats.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::Client;
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
        Publisher {
            client,
            js,
            subjects,
            metrics,
        }
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    fn subject(&self, kind: Kind) -> &str {
        match kind {
            Kind::Ack => &self.subjects.ack,
            Kind::Result => &self.subjects.result,
            Kind::Dlq => &self.subjects.dlq,
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
        let subject = self.subject(kind).to_owned();
        let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
        let mut delay = Duration::from_millis(50);
        loop {
            let r = match (&self.js, msg_id) {
                (Some(js), Some(id)) => {
                    let msg = jetstream::message::PublishMessage::build()
                        .payload(body.clone())
                        .message_id(format!("{}:{id}", kind.as_str()));
                    match js.send_publish(subject.clone(), msg).await {
                        Ok(ack) => ack.await.map(|_| ()).map_err(BoxError::from),
                        Err(e) => Err(BoxError::from(e)),
                    }
                }
                _ => self
                    .client
                    .publish(subject.clone(), body.clone())
                    .await
                    .map_err(BoxError::from),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.metrics
                        .publish_failures
                        .with_label_values(&[kind.as_str()])
                        .inc();
                    if tokio::time::Instant::now() + delay > deadline {
                        let what = format!("publishing {} to {subject}", kind.as_str());
                        return Err(TransportError::new(what, e));
                    }
                    tracing::warn!(kind = kind.as_str(), error = %e, "publish failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
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

    /// The server's max_payload (bytes), for the size check of results.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }
}
