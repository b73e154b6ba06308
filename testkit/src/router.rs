//! A Router stand-in on NATS: publishes assignments, records every ack, result, DLQ entry,
//! approval request and heartbeat the worker publishes; the contract's subjects; helpers to
//! build an assignment and to check a result's shape; the results kept in JetStream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

// The contract's subjects (docs/ARCHITECTURE.md, "wire").
pub const ASSIGN: &str = "caf.exec.assign.v1";
pub const ACK: &str = "caf.exec.assign.v1.ack";
pub const RESULT: &str = "caf.exec.result.v1";
pub const DLQ: &str = "caf.exec.dlq.v1";
pub const CANCEL: &str = "caf.exec.cancel.v1";
pub const APPROVAL_REQUEST: &str = "caf.human.approval.request.v1";
pub const APPROVAL_DECISION: &str = "caf.human.approval.decision.v1";
pub const HEARTBEAT: &str = "caf.worker.heartbeat.v1";

/// One message the worker published: subject, JSON body, headers.
type Published = (String, Value, Option<async_nats::HeaderMap>);

/// Everything the worker published, by subject, with headers.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    inner: Arc<Mutex<Vec<Published>>>,
}

impl Seen {
    pub fn on(&self, subject: &str) -> Vec<Value> {
        self.inner
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, _, _)| s == subject)
            .map(|(_, v, _)| v.clone())
            .collect()
    }

    /// How many messages `subject` has had (without copying them).
    pub fn count(&self, subject: &str) -> usize {
        self.inner
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, _, _)| s == subject)
            .count()
    }

    pub fn for_id(&self, subject: &str, id: &str) -> Vec<Value> {
        self.on(subject)
            .into_iter()
            .filter(|v| v["assignment_id"] == id)
            .collect()
    }

    pub fn headers_for(&self, subject: &str, id: &str) -> Vec<Option<async_nats::HeaderMap>> {
        self.inner
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, v, _)| s == subject && v["assignment_id"] == id)
            .map(|(_, _, h)| h.clone())
            .collect()
    }

    /// Waits until `subject` has a message for `id`; returns the first.
    pub async fn wait_for(&self, subject: &str, id: &str, timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = self.for_id(subject, id).into_iter().next() {
                return v;
            }
            assert!(
                Instant::now() < end,
                "no message on {subject} for {id} within {timeout:?}; seen: {:?}",
                self.summary()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_count(&self, subject: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let end = Instant::now() + timeout;
        loop {
            let seen = self.count(subject);
            if seen >= n {
                return self.on(subject);
            }
            assert!(
                Instant::now() < end,
                "only {seen} of {n} messages on {subject} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn summary(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (s, _, _) in self.inner.lock().expect("lock").iter() {
            *m.entry(s.clone()).or_insert(0) += 1;
        }
        m
    }
}

/// A Router stand-in: publishes assignments, records every worker output.
#[derive(Debug)]
pub struct Router {
    pub client: async_nats::Client,
    pub seen: Seen,
}

impl Router {
    pub async fn connect(url: &str) -> Router {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url)
            .await
            .expect("router connects");
        let seen = Seen::default();
        for subject in [ACK, RESULT, DLQ, APPROVAL_REQUEST, HEARTBEAT] {
            let mut sub = client.subscribe(subject).await.expect("subscribe");
            let seen = seen.clone();
            let subject = subject.to_owned();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                    seen.inner
                        .lock()
                        .expect("lock")
                        .push((subject.clone(), v, m.headers.clone()));
                }
            });
        }
        client.flush().await.expect("flush");
        Router { client, seen }
    }

    pub async fn publish(&self, subject: &str, body: impl Into<bytes::Bytes>) {
        self.client
            .publish(subject.to_owned(), body.into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
    }

    pub async fn assign(&self, v: &Value) {
        self.publish(ASSIGN, serde_json::to_vec(v).expect("json"))
            .await;
    }

    pub async fn assign_with_headers(&self, v: &Value, headers: &[(&str, &str)]) {
        let body = serde_json::to_vec(v).expect("json");
        self.publish_with_headers(ASSIGN, body, headers).await;
    }

    pub async fn publish_with_headers(
        &self,
        subject: &str,
        body: impl Into<bytes::Bytes>,
        headers: &[(&str, &str)],
    ) {
        let mut h = async_nats::HeaderMap::new();
        for (k, val) in headers {
            h.insert(*k, *val);
        }
        self.client
            .publish_with_headers(subject.to_owned(), h, body.into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
    }

    /// Waits for the result of `id` (default 15 s).
    pub async fn result(&self, id: &str) -> Value {
        self.seen
            .wait_for(RESULT, id, Duration::from_secs(15))
            .await
    }

    pub async fn ack(&self, id: &str) -> Value {
        self.seen.wait_for(ACK, id, Duration::from_secs(15)).await
    }

    pub async fn dlq(&self, id: &str) -> Value {
        self.seen.wait_for(DLQ, id, Duration::from_secs(15)).await
    }
}

/// Waits until the worker's consumer is bound (an echo fs.get round-trips).
pub async fn ready(router: &Router) {
    let id = format!("ready-{}", std::process::id());
    let end = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let this = format!("{id}-{n}");
        router
            .assign(&serde_json::json!({"version":"1","assignment_id": this,"tenant_id":"ready","job":{"type":"fs.get","path":"/nothing"}}))
            .await;
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            if !router.seen.for_id(RESULT, &this).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(Instant::now() < end, "worker never answered");
    }
}

/// A valid assignment with the given id and job.
pub fn assignment(id: &str, tenant: &str, job: Value) -> Value {
    serde_json::json!({
        "version": "1",
        "assignment_id": id,
        "request_id": format!("req-{id}"),
        "tenant_id": tenant,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "executor": {"provider_id": "test-provider"},
        "job": job,
    })
}

/// Checks the fields every result must carry (guide + deployed Router's validator).
pub fn assert_result_shape(r: &Value) {
    assert_eq!(r["version"], "1", "{r}");
    assert!(r["assignment_id"].is_string(), "{r}");
    let status = r["status"].as_str().expect("status");
    assert!(
        ["success", "error", "timeout", "cancelled"].contains(&status),
        "{r}"
    );
    assert!(r["latency_ms"].is_u64(), "{r}");
    assert!(r["cost"].is_number(), "{r}");
    assert!(r["attempts"].is_u64(), "{r}");
    assert!(
        r["timestamp"].is_u64() && r["timestamp"] == r["completed_at"],
        "{r}"
    );
    // The Router's validator reads both on every result: empty when the assignment named
    // no provider or no usable `job.type`.
    assert!(r["job"]["type"].is_string(), "{r}");
    assert!(r["provider_id"].is_string(), "{r}");
    assert!(r["metadata"]["worker_id"].is_string(), "{r}");
    if status != "success" {
        assert!(r["error"]["code"].is_u64(), "{r}");
        assert!(r["error"]["message"].is_string(), "{r}");
        assert!(r["error"]["retryable"].is_boolean(), "{r}");
        assert!(
            r["error_code"].is_string()
                && r["error_type"].is_string()
                && r["error_message"].is_string(),
            "{r}"
        );
    }
}

/// Every result kept in the output stream whose assignment id starts with `prefix`, by id
/// (raw bodies), read through an ordered JetStream consumer.
pub async fn stored_results(
    client: &async_nats::Client,
    prefix: &str,
) -> std::collections::HashMap<String, Vec<bytes::Bytes>> {
    let mut out: std::collections::HashMap<String, Vec<bytes::Bytes>> =
        std::collections::HashMap::new();
    let js = async_nats::jetstream::new(client.clone());
    let Ok(name) = js.stream_by_subject(RESULT).await else {
        return out;
    };
    let Ok(stream) = js.get_stream(&name).await else {
        return out;
    };
    let Ok(consumer) = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: RESULT.to_owned(),
            ..Default::default()
        })
        .await
    else {
        return out;
    };
    let Ok(mut msgs) = consumer.messages().await else {
        return out;
    };
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(1000), msgs.next()).await
    {
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        if let Some(id) = v["assignment_id"]
            .as_str()
            .filter(|id| id.starts_with(prefix))
        {
            out.entry(id.to_owned())
                .or_default()
                .push(m.payload.clone());
        }
    }
    out
}

impl Router {
    /// Publishes an assignment without a flush: for batches, which flush once at the end
    /// ([`Router::flush`]).
    pub async fn assign_unflushed(&self, v: &Value) {
        self.client
            .publish(ASSIGN, serde_json::to_vec(v).expect("json").into())
            .await
            .expect("publish");
    }

    /// Flushes what was published so far.
    pub async fn flush(&self) {
        self.client.flush().await.expect("flush");
    }
}

/// A broker, a worker on it with `--consumer=<mode>` and `args`, and a Router stand-in the
/// worker has answered: what most end-to-end tests start with.
pub async fn setup(
    mode: &str,
    args: &[&str],
) -> (crate::NatsServer, crate::worker::Worker, Router) {
    let nats = crate::NatsServer::start();
    let worker = crate::worker::Worker::builder(&nats.url())
        .arg(&format!("--consumer={mode}"))
        .args(args)
        .start();
    let router = Router::connect(&nats.url()).await;
    ready(&router).await;
    (nats, worker, router)
}
