//! A Router stand-in that connects with any `ConnectOptions` (credentials, TLS, several
//! URLs of a cluster) and keeps the raw bytes of what the worker published, so duplicates
//! can be compared byte for byte (e2e_nats_auth, e2e_cluster, e2e_fs_faults, e2e_health).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use crate::router::{ACK, ASSIGN, DLQ, RESULT};

static READY_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One message the worker published: subject and raw body.
type Raw = (String, bytes::Bytes);

/// A Router stand-in that connects with any `ConnectOptions` (auth, TLS) and keeps the raw
/// body of every ack, result and DLQ entry, so duplicates can be compared byte for byte.
#[derive(Clone)]
pub struct Listener {
    pub client: async_nats::Client,
    seen: Arc<Mutex<Vec<Raw>>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("seen", &self.seen.lock().map(|s| s.len()).unwrap_or(0))
            .finish()
    }
}

impl Listener {
    /// Connects to `url` (one URL or several, comma-separated) with `opts`.
    pub async fn connect(url: &str, opts: async_nats::ConnectOptions) -> Listener {
        let urls: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let client = opts
            .retry_on_initial_connect()
            .connect(urls.as_slice())
            .await
            .expect("listener connects");
        let seen: Arc<Mutex<Vec<Raw>>> = Arc::default();
        for subject in [ACK, RESULT, DLQ] {
            let mut sub = client.subscribe(subject).await.expect("subscribe");
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    seen.lock()
                        .expect("lock")
                        .push((m.subject.to_string(), m.payload));
                }
            });
        }
        let end = Instant::now() + Duration::from_secs(20);
        while client.flush().await.is_err() {
            assert!(Instant::now() < end, "listener never reached the server");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Listener { client, seen }
    }

    pub async fn assign(&self, v: &Value) {
        self.client
            .publish(ASSIGN, serde_json::to_vec(v).expect("json").into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
    }

    /// Raw bodies published on `subject` for assignment `id`.
    pub fn raw_for(&self, subject: &str, id: &str) -> Vec<bytes::Bytes> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, _)| s == subject)
            .filter(|(_, b)| {
                serde_json::from_slice::<Value>(b).is_ok_and(|v| v["assignment_id"] == id)
            })
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Raw bodies published on `subject`, by assignment id.
    pub fn raw_by_id(&self, subject: &str) -> std::collections::HashMap<String, Vec<bytes::Bytes>> {
        let mut out: std::collections::HashMap<String, Vec<bytes::Bytes>> =
            std::collections::HashMap::new();
        for (s, b) in self.seen.lock().expect("lock").iter() {
            if s != subject {
                continue;
            }
            if let Some(id) = serde_json::from_slice::<Value>(b)
                .ok()
                .and_then(|v| v["assignment_id"].as_str().map(str::to_owned))
            {
                out.entry(id).or_default().push(b.clone());
            }
        }
        out
    }

    /// Every parsed body on `subject`.
    pub fn on(&self, subject: &str) -> Vec<Value> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(s, _)| s == subject)
            .map(|(_, b)| serde_json::from_slice(b).unwrap_or(Value::Null))
            .collect()
    }

    /// Waits for the first message on `subject` for `id`.
    pub async fn wait_for(&self, subject: &str, id: &str, timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        loop {
            if let Some(b) = self.raw_for(subject, id).first() {
                return serde_json::from_slice(b).expect("json");
            }
            assert!(
                Instant::now() < end,
                "no message on {subject} for {id} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn result(&self, id: &str) -> Value {
        self.wait_for(RESULT, id, Duration::from_secs(15)).await
    }

    /// Waits until a worker answers (an fs.get of a missing file round-trips), like
    /// [`crate::router::ready`].
    pub async fn ready(&self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            // Unique across calls: a second worker must not be "ready" on the first one's
            // stored answer.
            let id = format!(
                "ready-{}-{}",
                std::process::id(),
                READY_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let a = serde_json::json!({"version":"1","assignment_id": id,"tenant_id":"ready","job":{"type":"fs.get","path":"/nothing"}});
            // A publish may fail while the connection is still coming up; try again.
            if self
                .client
                .publish(ASSIGN, serde_json::to_vec(&a).expect("json").into())
                .await
                .is_ok()
            {
                let _ = self.client.flush().await;
            }
            let step = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < step {
                if !self.raw_for(RESULT, &id).is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                Instant::now() < end,
                "no worker answered within {timeout:?}"
            );
        }
    }
}
