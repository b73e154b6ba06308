//! The only module that knows NATS: connecting (auth, TLS, reconnects), binding the
//! JetStream stream, durable consumer, output streams and result bucket, consuming in
//! either mode, and publishing acks, results, DLQ entries and heartbeats.

mod handles;
mod setup;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Subjects};
use crate::contract::AssignmentHeaders;
use crate::telemetry::Metrics;

pub use handles::*;
pub use setup::{bind_jetstream, JetStreamHandles};

/// Which of the worker's connections: the control connection (heartbeats, cancels,
/// decisions, approvals) or the intake lane of one CPU thread (assignments in, acks and
/// results out). Each is a `connection` label value of `worker_nats_connected` and
/// `worker_nats_reconnects_total` (`control`, `lane-N`), and health sees each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Control,
    Lane(usize),
}

impl Role {
    /// The `connection` label.
    pub fn label(self) -> String {
        match self {
            Role::Control => "control".to_owned(),
            Role::Lane(i) => format!("lane-{i}"),
        }
    }
}

/// Connects with the configured auth and TLS and keeps reconnecting forever; each
/// connection's state is in `metrics.connections` (gauge, reconnects, health).
pub async fn connect(cfg: &Config, metrics: Arc<Metrics>, role: Role) -> Result<Client, String> {
    connect_with(cfg, metrics, role, Buffers::default()).await
}

/// How many messages a connection's client may buffer: per subscription (what does not fit
/// is dropped by the client, as for a slow consumer) and outgoing (a publish waits).
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    pub subscription: usize,
    pub outgoing: usize,
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            subscription: 65_536,
            outgoing: 65_536,
        }
    }
}

/// [`connect`] with the client's buffers sized by the caller (an intake lane sizes them
/// from its share of `--max-memory-mb`).
pub async fn connect_with(
    cfg: &Config,
    metrics: Arc<Metrics>,
    role: Role,
    buffers: Buffers,
) -> Result<Client, String> {
    let m = metrics.clone();
    let label = role.label();
    metrics.connections.opening(&label);
    let (name, lane) = match role {
        Role::Control => (format!("beamline_worker {}", cfg.worker_id), None),
        Role::Lane(i) => (
            format!("beamline_worker {} lane {i}", cfg.worker_id),
            Some(i),
        ),
    };
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(Duration::from_secs(10))
        .client_capacity(buffers.outgoing.max(1))
        .subscription_capacity(buffers.subscription.max(1))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((50u64 << attempts.min(6)).min(2_000))
        })
        // The client's events name only the kind of a failed attempt ("IO error"); the
        // server pool it hands this callback carries the cause (certificate not trusted,
        // connection refused, ...): log it, at attempts 1, 2, 4, 8, ... per server.
        .reconnect_to_server_callback(|servers, _info| async move {
            for s in servers
                .iter()
                .filter(|s| s.failed_attempts.is_power_of_two())
            {
                if let Some(error) = &s.last_error {
                    tracing::warn!(
                        server = %format!("{}:{}", s.addr.host(), s.addr.port()),
                        attempts = s.failed_attempts,
                        error = %error,
                        "NATS connection attempt failed"
                    );
                }
            }
            None
        })
        .event_callback(move |event| {
            let (m, label) = (m.clone(), label.clone());
            async move {
                match (lane, event) {
                    (_, async_nats::Event::Connected) => {
                        m.connections.up(&label);
                        match lane {
                            Some(lane) => tracing::debug!(lane, "NATS lane connection up"),
                            None => {
                                tracing::info!(event = "nats_connected", "NATS connection up")
                            }
                        }
                    }
                    (_, async_nats::Event::Disconnected) => {
                        m.connections.down(&label);
                        tracing::warn!(
                            event = "nats_disconnected",
                            connection = %label,
                            "NATS connection lost; reconnecting"
                        );
                    }
                    // The lane's subscription buffer was full: the client dropped an
                    // assignment (counted by `consume_core` from the client's statistics).
                    (Some(lane), async_nats::Event::SlowConsumer(_)) => {
                        tracing::debug!(lane, "lane subscription full: assignment dropped");
                    }
                    (_, other) => {
                        tracing::warn!(connection = %label, event = %other, "NATS event")
                    }
                }
            }
        });
    let auth = &cfg.nats_auth;
    if let (Some(u), Some(p)) = (&auth.user, &auth.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &auth.token {
        opts = opts.token(t.clone());
    }
    if let Some(seed) = &auth.nkey_seed {
        opts = opts.nkey(seed.clone());
    }
    if let Some(f) = &auth.creds_file {
        opts = opts
            .credentials_file(f)
            .await
            .map_err(|e| format!("--nats-creds {}: {e}", f.display()))?;
    }
    if let Some(ca) = &auth.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    // A comma-separated list names the servers of a cluster.
    let servers = cfg
        .nats_url
        .split(',')
        .map(|s| s.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--nats-url {}: {e}", cfg.nats_url))?;
    let client = opts
        .connect(servers)
        .await
        .map_err(|e| format!("connecting to {}: {e}", cfg.nats_url))?;
    Ok(client)
}

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
    ) -> Result<(), String> {
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
                        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
                _ => self
                    .client
                    .publish(subject.clone(), body.clone())
                    .await
                    .map_err(|e| e.to_string()),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.metrics
                        .publish_failures
                        .with_label_values(&[kind.as_str()])
                        .inc();
                    if tokio::time::Instant::now() + delay > deadline {
                        return Err(format!("publishing {} to {subject}: {e}", kind.as_str()));
                    }
                    tracing::warn!(kind = kind.as_str(), error = %e, "publish failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// A core publish on any subject (approval requests, heartbeats).
    pub async fn publish_core(&self, subject: &str, body: Bytes) -> Result<(), String> {
        self.client
            .publish(subject.to_owned(), body)
            .await
            .map_err(|e| e.to_string())
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The server's max_payload (bytes), for the size check of results.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }
}

/// How an assignment is settled with the broker.
enum Settle {
    /// Core NATS: nothing to settle.
    Core,
    Js(Box<jetstream::message::Acker>),
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Settle::Core => "Core",
            Settle::Js(_) => "JetStream",
        })
    }
}

/// What bounds JetStream intake across the worker's lanes: the assignments taken and not
/// finished (a count), and their payload bytes (in KiB). A delivery holds its share until
/// it is dropped, so a full worker stops pulling.
#[derive(Debug)]
pub struct IntakeBudget {
    slots: Semaphore,
    kib: Semaphore,
    kib_total: usize,
    /// Core mode: what refusals in progress may hold (a quarter of `kib_total`, in KiB;
    /// a refusal costs about three times its payload: its ack, result and DLQ entry).
    refusing: Semaphore,
    refusing_kib: usize,
    lanes: usize,
}

impl IntakeBudget {
    /// `slots` assignments and `bytes` of payload at once, pulled by `lanes` lanes.
    pub fn new(slots: usize, bytes: u64, lanes: usize) -> Arc<IntakeBudget> {
        let kib_total = ((bytes >> 10) as usize).clamp(1, u32::MAX as usize);
        Arc::new(IntakeBudget {
            slots: Semaphore::new(slots.max(1)),
            kib: Semaphore::new(kib_total),
            kib_total,
            refusing: Semaphore::new((kib_total / 4).max(1)),
            refusing_kib: (kib_total / 4).max(1),
            lanes: lanes.max(1),
        })
    }

    /// Slots free now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }
}

/// A delivery's share of the intake budget, given back when it is dropped.
#[derive(Debug)]
struct Hold {
    budget: Arc<IntakeBudget>,
    kib: usize,
    /// A JetStream delivery (a slot and bytes), or a core refusal (refusal bytes).
    slot: bool,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.slot {
            self.budget.slots.add_permits(1);
            self.budget.kib.add_permits(self.kib);
        } else {
            self.budget.refusing.add_permits(self.kib);
        }
    }
}

impl IntakeBudget {
    /// The client buffers of one lane's connection (messages), from its share of the byte
    /// budget at 16 KiB a message (an 8 KiB assignment or its DLQ copy), 256 to 65 536.
    /// A count, not bytes: with larger messages they hold more (up to `max_payload` each).
    pub fn lane_buffers(&self) -> Buffers {
        let per_lane = (self.kib_total << 10) / self.lanes;
        let n = (per_lane / (16 << 10)).clamp(256, 65_536);
        Buffers {
            subscription: n,
            outgoing: n,
        }
    }
}

/// One assignment as delivered, with what is needed to settle it.
#[derive(Debug)]
pub struct Delivery {
    pub payload: Bytes,
    pub headers: AssignmentHeaders,
    /// JetStream delivery count (1 for core NATS).
    pub delivered: i64,
    settle: Settle,
    /// The connection it came in on, which also carries its ack and result.
    publisher: Arc<Publisher>,
    /// Its share of the JetStream intake budget.
    _hold: Option<Hold>,
}

impl Delivery {
    /// Publishes on the connection the assignment came in on (no hop to another thread).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn redelivered(&self) -> bool {
        self.delivered > 1
    }

    pub fn is_jetstream(&self) -> bool {
        matches!(self.settle, Settle::Js(_))
    }

    /// Done with it: the result is stored.
    pub async fn ack(&self) {
        if let Settle::Js(a) = &self.settle {
            if let Err(e) = a.ack().await {
                tracing::warn!(error = %e, "JetStream ack failed; the assignment will be redelivered and deduplicated");
            }
        }
    }

    /// Not now: redeliver after `delay` (JetStream only).
    pub async fn nak(&self, delay: Duration) {
        if let Settle::Js(a) = &self.settle {
            if let Err(e) = a.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(error = %e, "JetStream nak failed");
            }
        }
    }

    /// Still working: extend the ack wait.
    pub async fn in_progress(&self) {
        if let Settle::Js(a) = &self.settle {
            let _ = a.ack_with(AckKind::Progress).await;
        }
    }
}

fn headers_of(h: Option<&HeaderMap>) -> AssignmentHeaders {
    let Some(h) = h else {
        return AssignmentHeaders::default();
    };
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
    AssignmentHeaders {
        tenant_id: get("tenant_id"),
        version: get("version"),
        trace_id: get("trace_id"),
        traceparent: get("traceparent"),
    }
}

/// Where an intake lane hands the assignments it receives.
pub trait Sink: Send + Sync + 'static {
    /// Queues an assignment; gives it back when the queue is full.
    #[allow(clippy::result_large_err)] // hands ownership back; boxing it would cost an allocation per message
    fn submit(&self, d: Delivery) -> Result<(), Delivery>;
    /// Answers an assignment the worker has no room for (core mode: 4002).
    fn refuse(&self, d: Delivery);
    /// Whether to take more work now (false while over the memory budget).
    fn accepting(&self) -> bool {
        true
    }
}

/// Where the control connection hands cancel requests and approval decisions.
pub trait Control: Send + Sync + 'static {
    fn cancel(&self, payload: &[u8]);
    fn decision(&self, payload: &[u8]);
}

/// Subscribes to the assign subject in the queue group (retrying until `stop`) and waits
/// until the server has the subscription, so nothing published after this returns is
/// missed.
pub async fn subscribe_assignments(
    cfg: &Config,
    client: &Client,
    stop: &CancellationToken,
) -> Option<async_nats::Subscriber> {
    loop {
        match client
            .queue_subscribe(cfg.subjects.assign.clone(), cfg.queue_group.clone())
            .await
        {
            Ok(s) => {
                // A round trip (a request nobody answers: the server says "no responders"),
                // so the server has processed the SUB before this returns.
                let probe = client.request(client.new_inbox(), Bytes::new());
                let _ = tokio::time::timeout(Duration::from_secs(2), probe).await;
                return Some(s);
            }
            Err(e) => {
                tracing::error!(error = %e, "subscribing to assignments failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

/// Core NATS intake: every message of the subscription goes to `sink`, or is refused
/// (4002) when the sink is full, until `stop`. The refusals in progress are bounded by
/// payload bytes (a quarter of the intake byte budget; queued and running work is
/// bounded by the queues): a message over it is dropped, as the client drops for a slow consumer
/// (counted in `worker_intake_dropped_total`; the Router's retry covers it), so a flood
/// faster than the worker can refuse costs bounded memory.
#[allow(clippy::too_many_arguments)] // one call site (runtime::lane)
pub async fn consume_core(
    cfg: Arc<Config>,
    mut sub: async_nats::Subscriber,
    stats: Arc<async_nats::Statistics>,
    sink: Arc<dyn Sink>,
    budget: Arc<IntakeBudget>,
    metrics: Arc<Metrics>,
    publisher: Arc<Publisher>,
    stop: CancellationToken,
) {
    use futures::FutureExt;
    use std::sync::atomic::Ordering::Relaxed;
    tracing::info!(subject = %cfg.subjects.assign, queue_group = %cfg.queue_group, "consuming (core NATS queue group)");
    let mut dropped = 0u64;
    // The client drops what does not fit the subscription's buffer (a slow consumer). Its
    // slow-consumer events can be lost themselves (a bounded event queue), so its drops
    // are counted from its statistics: every message this connection received was taken
    // here or dropped there, exact whenever the buffer is empty (the client's reader runs
    // on this same thread, so it is never half-way through a message here).
    let (baseline, mut taken, mut client_dropped) = (stats.in_messages.load(Relaxed), 0u64, 0u64);
    loop {
        // Unconstrained: tokio's cooperative budget would otherwise answer "pending" while
        // messages wait, and they would be counted as dropped.
        let msg = match tokio::task::coop::unconstrained(sub.next()).now_or_never() {
            Some(m) => m,
            None => {
                let received = stats.in_messages.load(Relaxed).saturating_sub(baseline);
                let lost = received.saturating_sub(taken);
                if lost > client_dropped {
                    metrics.intake_dropped.inc_by(lost - client_dropped);
                    tracing::warn!(
                        dropped = lost,
                        "lane subscription buffer was full: assignments dropped (slow consumer)"
                    );
                    client_dropped = lost;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    m = sub.next() => m,
                }
            }
        };
        let Some(msg) = msg else { break };
        taken += 1;
        let d = Delivery {
            headers: headers_of(msg.headers.as_ref()),
            payload: msg.payload,
            delivered: 1,
            settle: Settle::Core,
            publisher: publisher.clone(),
            _hold: None,
        };
        let Err(mut d) = sink.submit(d) else {
            continue;
        };
        // No room: refuse it (4002) while the refusals in progress fit their byte bound
        // (a refusal holds its payload until its ack, result and DLQ entry are handed to
        // the client); beyond it, drop it as a slow consumer's message.
        let kib = d.payload.len().div_ceil(1024).clamp(1, budget.refusing_kib);
        let Ok(bytes) = budget.refusing.try_acquire_many(kib as u32) else {
            metrics.intake_dropped.inc();
            dropped += 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    bound_kib = budget.refusing_kib,
                    "core intake over its byte bound: assignment dropped (slow consumer)"
                );
            }
            continue;
        };
        bytes.forget();
        d._hold = Some(Hold {
            budget: budget.clone(),
            kib,
            slot: false,
        });
        sink.refuse(d);
    }
    let _ = sub.unsubscribe().await;
}

/// Idle heartbeat asked of the server on each pull request.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// JetStream intake: pulls from the durable consumer (shared by every lane and instance)
/// while the intake budget has room and the sink is accepting, until `stop`; rebinds the
/// consumer when the server lost it.
pub async fn consume_jetstream(
    cfg: Arc<Config>,
    js: JetStreamHandles,
    sink: Arc<dyn Sink>,
    budget: Arc<IntakeBudget>,
    metrics: Arc<Metrics>,
    publisher: Arc<Publisher>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    'rebind: loop {
        if stop.is_cancelled() {
            return;
        }
        let consumer = match js.assign_consumer(&cfg).await {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, "binding the JetStream consumer failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    // Fast while a new leader is being elected, then backing off.
                    _ = tokio::time::sleep(Duration::from_millis((50 * failures as u64).min(1000))) => {}
                }
                continue;
            }
        };
        // A lane asks for its share of the budget at most, so what waits in the client's
        // buffer is bounded too; never below two of the largest messages the server takes.
        let batch = (budget.free_slots() / budget.lanes).clamp(1, 256);
        let max_bytes = ((budget.kib_total << 10) / budget.lanes)
            .max(publisher.max_payload().saturating_mul(2))
            .max(1 << 20);
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(batch)
            .max_bytes_per_batch(max_bytes)
            // The server sends an idle heartbeat every second; two missed (the client's
            // rule) is a lost consumer or leader, rebound at once below: intake resumes
            // ~2 s after a leader loss instead of 10–20 s (docs/RELIABILITY.md).
            .heartbeat(PULL_HEARTBEAT)
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "starting the pull consumer failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
        tracing::info!(stream = %js.stream_name, durable = %cfg.js.durable, "consuming (JetStream durable pull consumer)");
        let mut errors_in_row = 0u32;
        loop {
            // Over the memory budget: stop pulling until it is back under.
            while !sink.accepting() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            // Take a slot before the next message, so a full worker stops pulling.
            let permit = tokio::select! {
                _ = stop.cancelled() => return,
                p = budget.slots.acquire() => match p { Ok(p) => p, Err(_) => return },
            };
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = messages.next() => n,
            };
            match next {
                Some(Ok(msg)) => {
                    errors_in_row = 0;
                    failures = 0;
                    // Its bytes too: while the worker holds its byte budget, wait (and pull
                    // nothing more) until finished assignments give some back.
                    let kib = msg.payload.len().div_ceil(1024).clamp(1, budget.kib_total);
                    let bytes = tokio::select! {
                        _ = stop.cancelled() => return,
                        p = budget.kib.acquire_many(kib as u32) => match p { Ok(p) => p, Err(_) => return },
                    };
                    permit.forget();
                    bytes.forget();
                    let hold = Hold {
                        budget: budget.clone(),
                        kib,
                        slot: true,
                    };
                    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
                    let (m, acker) = msg.split();
                    let d = Delivery {
                        headers: headers_of(m.headers.as_ref()),
                        payload: m.payload,
                        delivered,
                        settle: Settle::Js(Box::new(acker)),
                        publisher: publisher.clone(),
                        _hold: Some(hold),
                    };
                    if let Err(d) = sink.submit(d) {
                        // The budget bounds intake below the queues, so this is rare: let
                        // JetStream hold it a moment (the share is given back with `d`).
                        d.nak(Duration::from_millis(500)).await;
                    }
                }
                Some(Err(e)) => {
                    drop(permit);
                    errors_in_row += 1;
                    tracing::warn!(error = %e, errors_in_row, "pull consumer error");
                    // nats.rs#1584: a consumer the server lost keeps yielding errors
                    // instead of ending; rebind it. A missed heartbeat or a deleted
                    // consumer says so at once: rebind without waiting for more.
                    use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
                    let lost = matches!(
                        e.kind(),
                        K::MissingHeartbeat | K::ConsumerDeleted | K::NoResponders
                    );
                    if lost || errors_in_row >= 3 {
                        metrics.js_consumer_recreated.inc();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'rebind;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => {
                    drop(permit);
                    metrics.js_consumer_recreated.inc();
                    continue 'rebind;
                }
            }
        }
    }
}

/// Cancel requests reach every instance (plain subscription, no queue group).
pub async fn consume_control(
    client: Client,
    subjects: Subjects,
    js: Option<JetStreamHandles>,
    sink: Arc<dyn Control>,
    stop: CancellationToken,
) {
    let cancels = async {
        loop {
            match client.subscribe(subjects.cancel.clone()).await {
                Ok(mut sub) => {
                    while let Some(m) = sub.next().await {
                        sink.cancel(&m.payload);
                    }
                }
                Err(e) => tracing::error!(error = %e, "subscribing to cancels failed"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let decisions = async {
        match js {
            // Decisions are kept in a stream so that none is lost while a worker restarts;
            // every instance replays them through its own ordered consumer.
            Some(js) if js.approvals.is_some() => loop {
                match js.decisions().await {
                    Ok(mut msgs) => {
                        while let Some(m) = msgs.next().await {
                            match m {
                                Ok(m) => sink.decision(&m.payload),
                                Err(e) => {
                                    tracing::warn!(error = %e, "approval decision stream error");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading approval decisions failed"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            },
            _ => loop {
                match client.subscribe(subjects.approval_decision.clone()).await {
                    Ok(mut sub) => {
                        while let Some(m) = sub.next().await {
                            sink.decision(&m.payload);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "subscribing to approval decisions failed")
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            },
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = cancels => {}
        _ = decisions => {}
    }
}
