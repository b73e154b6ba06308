//! The null-echo worker: the ceiling for any worker on this host.
//!
//! It receives each assignment, byte-splices its `assignment_id` into a fixed ack and a
//! fixed result, publishes both, and does nothing else: no JSON parsing, no block work.
//! It runs as a child process of the bench (`beamline-bench null-worker ...`) so its CPU
//! time is measured from `/proc` exactly like the real worker's. It listens on its own
//! subject prefix (`benchnull.`) so it can sit idle on the same broker while the real
//! worker is measured, and vice versa.

use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use async_nats::jetstream::{self, consumer::pull, message::PublishMessage as Publish, stream};
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::StreamExt;

/// Subject prefix of the null-echo worker (the real worker uses `caf`).
pub(crate) const NULL_PREFIX: &str = "benchnull";

/// The worker's subjects for a given prefix (`caf` for the real worker).
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    pub(crate) assign: String,
    pub(crate) ack: String,
    pub(crate) result: String,
    pub(crate) dlq: String,
    /// JetStream streams, named like the worker's (`CAF_EXEC_ASSIGN` / `CAF_EXEC_OUT` for
    /// prefix `caf`; `BENCHNULL_EXEC_*` for the null-echo worker).
    pub(crate) assign_stream: String,
    pub(crate) out_stream: String,
}

impl Subjects {
    pub(crate) fn with_prefix(prefix: &str) -> Self {
        Subjects {
            assign: format!("{prefix}.exec.assign.v1"),
            ack: format!("{prefix}.exec.assign.v1.ack"),
            result: format!("{prefix}.exec.result.v1"),
            dlq: format!("{prefix}.exec.dlq.v1"),
            assign_stream: format!("{}_EXEC_ASSIGN", prefix.to_uppercase()),
            out_stream: format!("{}_EXEC_OUT", prefix.to_uppercase()),
        }
    }
}

/// Finds the value of the first `"assignment_id"` key by byte search. The value must be a
/// JSON string without escapes (true for every id the bench generates).
pub(crate) fn extract_assignment_id(payload: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"assignment_id\"";
    let at = memchr::memmem::find(payload, KEY)? + KEY.len();
    let rest = &payload[at..];
    let mut i = 0;
    while i < rest.len() && matches!(rest[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    if rest.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while i < rest.len() && matches!(rest[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    if rest.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let len = memchr::memchr2(b'"', b'\\', &rest[start..])?;
    if rest[start + len] != b'"' || len == 0 {
        return None;
    }
    Some(&rest[start..start + len])
}

/// Fixed ack / result bodies with a hole for the assignment id.
#[derive(Debug, Clone)]
pub(crate) struct Splicer {
    ack: (&'static [u8], &'static [u8]),
    result: (&'static [u8], &'static [u8]),
}

impl Default for Splicer {
    fn default() -> Self {
        Splicer {
            ack: (
                br#"{"version":"1","assignment_id":""#,
                br#"","status":"accepted","message":"null-echo","tenant_id":"bench"}"#,
            ),
            result: (
                br#"{"version":"1","assignment_id":""#,
                br#"","status":"success","tenant_id":"bench","job":{"type":"null"},"result":{},"latency_ms":0,"cost":0}"#,
            ),
        }
    }
}

impl Splicer {
    fn splice(parts: (&[u8], &[u8]), id: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(parts.0.len() + id.len() + parts.1.len());
        b.put_slice(parts.0);
        b.put_slice(id);
        b.put_slice(parts.1);
        b.freeze()
    }
    pub(crate) fn ack(&self, id: &[u8]) -> Bytes {
        Self::splice(self.ack, id)
    }
    pub(crate) fn result(&self, id: &[u8]) -> Bytes {
        Self::splice(self.result, id)
    }
}

/// Queue group / durable consumer name of the null-echo worker.
pub(crate) const NULL_DURABLE: &str = "benchnull";

/// Core NATS null-echo loop: queue-subscribe, splice, publish ack + result.
pub(crate) async fn run_core(client: async_nats::Client, subjects: Subjects) -> Result<()> {
    let splicer = Splicer::default();
    let mut sub = client
        .queue_subscribe(subjects.assign.clone(), NULL_DURABLE.to_string())
        .await
        .map_err(|e| anyhow!("subscribe: {e}"))?;
    client.flush().await.map_err(|e| anyhow!("flush: {e}"))?;
    let ack_subject = async_nats::Subject::from(subjects.ack.as_str());
    let result_subject = async_nats::Subject::from(subjects.result.as_str());
    // Ends when the connection closes (the bench kills this process when done).
    while let Some(msg) = sub.next().await {
        let Some(id) = extract_assignment_id(&msg.payload) else {
            continue;
        };
        client
            .publish(ack_subject.clone(), splicer.ack(id))
            .await
            .map_err(|e| anyhow!("publish ack: {e}"))?;
        client
            .publish(result_subject.clone(), splicer.result(id))
            .await
            .map_err(|e| anyhow!("publish result: {e}"))?;
    }
    Ok(())
}

/// Creates (or binds) the null consumer's streams: a work-queue stream on the assign
/// subject and an output stream capturing ack / result / dlq, like the worker does.
pub(crate) async fn ensure_null_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<stream::Stream> {
    let assign = js
        .get_or_create_stream(stream::Config {
            name: subjects.assign_stream.clone(),
            subjects: vec![subjects.assign.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("create {}: {e}", subjects.assign_stream))?;
    js.get_or_create_stream(stream::Config {
        name: subjects.out_stream.clone(),
        subjects: vec![
            subjects.ack.clone(),
            subjects.result.clone(),
            subjects.dlq.clone(),
        ],
        storage: stream::StorageType::File,
        // Bounded: old ack/result copies are dropped past 512 MiB or 10 minutes.
        max_bytes: 512 * 1024 * 1024,
        max_age: Duration::from_secs(600),
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("create {}: {e}", subjects.out_stream))?;
    Ok(assign)
}

/// JetStream null consumer: pull from a work-queue stream, publish ack + result into the
/// output stream (with `Nats-Msg-Id`, as the contract asks of the worker), and ack the
/// assignment once the result's publish-ack came back. Up to `max_inflight` assignments
/// are pipelined.
pub(crate) async fn run_jetstream(
    client: async_nats::Client,
    subjects: Subjects,
    batch: usize,
    max_inflight: usize,
) -> Result<()> {
    let splicer = Splicer::default();
    let js = jetstream::new(client);
    let assign = ensure_null_streams(&js, &subjects).await?;
    let consumer: jetstream::consumer::PullConsumer = assign
        .get_or_create_consumer(
            NULL_DURABLE,
            pull::Config {
                durable_name: Some(NULL_DURABLE.to_string()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                max_ack_pending: (max_inflight * 4) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow!("create consumer: {e}"))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await
        .map_err(|e| anyhow!("pull stream: {e}"))?;
    let mut inflight = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                let r: Result<()> = done;
                r?;
            }
            next = messages.next(), if inflight.len() < max_inflight => {
                let Some(msg) = next else { break };
                let msg = msg.map_err(|e| anyhow!("pull: {e}"))?;
                let Some(id) = extract_assignment_id(&msg.payload) else {
                    msg.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
                    continue;
                };
                let id_str = String::from_utf8_lossy(id);
                let ack_f = js
                    .send_publish(
                        subjects.ack.clone(),
                        Publish::build().payload(splicer.ack(id)).message_id(format!("{id_str}.ack")),
                    )
                    .await
                    .map_err(|e| anyhow!("publish ack: {e}"))?;
                let res_f = js
                    .send_publish(
                        subjects.result.clone(),
                        Publish::build()
                            .payload(splicer.result(id))
                            .message_id(format!("{id_str}.result")),
                    )
                    .await
                    .map_err(|e| anyhow!("publish result: {e}"))?;
                inflight.push(async move {
                    ack_f.await.map_err(|e| anyhow!("ack puback: {e}"))?;
                    res_f.await.map_err(|e| anyhow!("result puback: {e}"))?;
                    msg.ack().await.map_err(|e| anyhow!("ack assignment: {e}"))?;
                    Ok(())
                });
            }
        }
    }
    Ok(())
}

/// Entry point of `beamline-bench null-worker`.
pub(crate) async fn serve(
    nats_url: &str,
    jetstream_mode: bool,
    prefix: &str,
    batch: usize,
    max_inflight: usize,
) -> Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name("beamline-bench-null-worker")
        .connect(nats_url)
        .await
        .with_context(|| format!("connect {nats_url}"))?;
    let subjects = Subjects::with_prefix(prefix);
    if jetstream_mode {
        run_jetstream(client, subjects, batch, max_inflight).await
    } else {
        run_core(client, subjects).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_id_with_and_without_whitespace() {
        assert_eq!(
            extract_assignment_id(br#"{"version":"1","assignment_id":"b1-42","x":1}"#),
            Some(&b"b1-42"[..])
        );
        assert_eq!(
            extract_assignment_id(b"{ \"assignment_id\" :\n \"abc\" }"),
            Some(&b"abc"[..])
        );
        assert_eq!(extract_assignment_id(br#"{"assignment_id":""}"#), None);
        assert_eq!(extract_assignment_id(br#"{"assignment_id":"a\"b"}"#), None);
        assert_eq!(extract_assignment_id(br#"{"assignment_id":7}"#), None);
        assert_eq!(
            extract_assignment_id(br#"{"assignment_id":"unterminated"#),
            None
        );
        assert_eq!(extract_assignment_id(b"not json"), None);
    }

    #[test]
    fn spliced_ack_and_result_are_valid_json_echoing_the_id() {
        let s = Splicer::default();
        let ack: serde_json::Value = serde_json::from_slice(&s.ack(b"bq-7-99")).expect("ack json");
        assert_eq!(ack["assignment_id"], "bq-7-99");
        assert_eq!(ack["status"], "accepted");
        let res: serde_json::Value =
            serde_json::from_slice(&s.result(b"bq-7-99")).expect("result json");
        assert_eq!(res["assignment_id"], "bq-7-99");
        assert_eq!(res["status"], "success");
        assert_eq!(res["version"], "1");
    }

    #[test]
    fn subjects_follow_the_contract_suffixes() {
        let s = Subjects::with_prefix("caf");
        assert_eq!(s.assign, "caf.exec.assign.v1");
        assert_eq!(s.ack, "caf.exec.assign.v1.ack");
        assert_eq!(s.result, "caf.exec.result.v1");
        assert_eq!(s.dlq, "caf.exec.dlq.v1");
        assert_eq!(s.assign_stream, "CAF_EXEC_ASSIGN");
        assert_eq!(
            Subjects::with_prefix(NULL_PREFIX).out_stream,
            "BENCHNULL_EXEC_OUT"
        );
    }
}
