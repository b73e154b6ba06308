//! Spans to OpenTelemetry: the `tracing` spans the pipeline opens (`worker.assignment.receive`,
//! `worker.block.execute`, `worker.result.publish`) become OTel spans, exported as OTLP/HTTP
//! protobuf to `<--otlp-endpoint>/v1/traces`, with their fields (`tenant_id`, `trace_id`,
//! `run_id`, `block_type`, `worker_id`) as attributes and `service.name = beamline_worker`.
//!
//! - No endpoint: nothing is installed at all; every function here is a no-op.
//! - The hot path never waits on the exporter: a finished span goes into a bounded queue (the
//!   SDK's batch processor, on its own thread). When the queue is full the span is dropped and
//!   counted in `worker_spans_dropped_total`, as are the spans of a batch whose export failed
//!   (after the exporter's retries). The SDK exposes no drop hook, so [`Admission`] keeps its
//!   own count of queued spans and refuses at the queue's capacity.
//! - The exporter's HTTP client runs on a private one-thread Tokio runtime, so exporting
//!   never takes a turn on the transport or CPU threads.
//! - [`Traces::shutdown`] flushes what is queued, bounded by [`SHUTDOWN_TIMEOUT`].
//! - [`continue_trace`] makes the Router's W3C trace id the trace of an assignment's spans.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanExporter,
    SpanProcessor, Tracer,
};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::Config;
use crate::telemetry::Metrics;

/// `service.name` of every span.
pub const SERVICE_NAME: &str = "beamline_worker";
/// How long one export may take (connect, send, answer), retries included.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the flush at shutdown may take.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans held for export at most (`OTEL_BSP_MAX_QUEUE_SIZE` overrides).
pub const DEFAULT_QUEUE: usize = 2048;

/// Set once an exporter is installed; [`continue_trace`] does nothing until then.
static EXPORTING: AtomicBool = AtomicBool::new(false);
/// `worker_spans_dropped_total`, once [`bind_metrics`] has been called.
static DROPPED: OnceLock<prometheus::IntCounter> = OnceLock::new();
/// Drops counted before [`bind_metrics`].
static DROPPED_EARLY: AtomicU64 = AtomicU64::new(0);

/// Connects span drops to the worker's `worker_spans_dropped_total`. Call once, when the
/// worker's [`Metrics`] exist; drops counted before are added then.
pub fn bind_metrics(metrics: &Metrics) {
    let counter = metrics.spans_dropped.clone();
    if DROPPED.set(counter.clone()).is_ok() {
        counter.inc_by(DROPPED_EARLY.swap(0, Ordering::Relaxed));
    }
}

fn count_dropped(n: usize) {
    match DROPPED.get() {
        Some(c) => c.inc_by(n as u64),
        None => {
            DROPPED_EARLY.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Spans dropped so far (queue full or export failed), counted or not yet bound.
pub fn spans_dropped() -> u64 {
    DROPPED.get().map_or(0, |c| c.get()) + DROPPED_EARLY.load(Ordering::Relaxed)
}

/// Makes `span` continue the Router's trace: when `trace_id` is a 32-hex W3C trace id (or a
/// whole `traceparent`), the span and its children carry that OTel trace id. Call it right
/// after creating the span, before it is entered or given children. Otherwise (no
/// exporter, no id, not a W3C id) it does nothing and the span starts a trace of its own;
/// the `trace_id` attribute still carries the Router's id for correlation.
pub fn continue_trace(span: &tracing::Span, trace_id: Option<&str>) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let Some(parent) = trace_id.and_then(remote_parent) else {
        return;
    };
    if let Err(e) = span.set_parent(Context::new().with_remote_span_context(parent)) {
        tracing::debug!(error = %e, "cannot continue the Router's trace");
    }
}

/// The W3C `traceparent` of `span` as exported (`00-<trace>-<span>-01`), for propagating the
/// trace to an upstream; `None` when nothing is exported.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The remote parent for a Router trace id: `<32 hex>` or `00-<32 hex>-<16 hex>-<2 hex>`.
/// The Router names no span of its own in the first form; the parent span id is then
/// derived from the trace id, so every worker span of one Router trace hangs off the same
/// (remote) parent.
pub fn remote_parent(id: &str) -> Option<SpanContext> {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let (trace_hex, span_hex) = match id.split('-').collect::<Vec<_>>()[..] {
        [t] => (t, None),
        ["00", t, s, f] if hex(s, 16) && hex(f, 2) => (t, Some(s)),
        _ => return None,
    };
    if !hex(trace_hex, 32) {
        return None;
    }
    let trace = u128::from_str_radix(trace_hex, 16)
        .ok()
        .filter(|t| *t != 0)?;
    let span = match span_hex {
        Some(s) => u64::from_str_radix(s, 16).ok().filter(|s| *s != 0)?,
        None => ((trace as u64) ^ ((trace >> 64) as u64)).max(1),
    };
    Some(SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// `<endpoint>/v1/traces`, unless the endpoint already names that path.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let e = endpoint.trim().trim_end_matches('/');
    if !(e.starts_with("http://") || e.starts_with("https://")) {
        return Err(format!(
            "OTLP endpoint {endpoint:?}: expected http:// or https://"
        ));
    }
    Ok(if e.ends_with("/v1/traces") {
        e.to_owned()
    } else {
        format!("{e}/v1/traces")
    })
}

/// The trace pipeline of the process: present only when an endpoint is configured. Keep it
/// alive for the life of the process; dropping it (or [`Traces::shutdown`]) flushes.
#[derive(Debug, Default)]
pub struct Traces {
    provider: Option<SdkTracerProvider>,
    tracer: Option<Tracer>,
    problem: Option<String>,
}

impl Traces {
    /// Builds the exporter for `cfg.otlp_endpoint`; nothing at all without one. A bad
    /// endpoint does not stop the worker: tracing stays off and [`Traces::problem`] says why.
    pub fn start(cfg: &Config) -> Traces {
        match cfg
            .otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            None => Traces::default(),
            Some(endpoint) => match build(endpoint, &cfg.worker_id) {
                Ok((provider, tracer)) => {
                    EXPORTING.store(true, Ordering::Relaxed);
                    Traces {
                        provider: Some(provider),
                        tracer: Some(tracer),
                        problem: None,
                    }
                }
                Err(e) => Traces {
                    provider: None,
                    tracer: None,
                    problem: Some(e),
                },
            },
        }
    }

    /// Whether spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.tracer.is_some()
    }

    /// Why export is off although an endpoint was configured.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// The `tracing` layer feeding the exporter: spans of this crate at INFO and above, never
    /// events (log lines stay in the logs, where they are redacted).
    pub fn layer<S>(&self) -> Option<impl Layer<S> + Send + Sync + 'static>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.tracer.clone()?;
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_threads(false)
                .with_filter(filter_fn(|m| {
                    m.is_span()
                        && *m.level() <= tracing::Level::INFO
                        && m.target().starts_with("beamline_worker")
                })),
        )
    }

    /// Flushes the queued spans (at most [`SHUTDOWN_TIMEOUT`]) and stops exporting.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tracer = None;
        if let Some(p) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(e) = p.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                tracing::warn!(error = %e, "flushing spans at shutdown failed");
            }
        }
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        self.stop();
    }
}

fn build(endpoint: &str, worker_id: &str) -> Result<(SdkTracerProvider, Tracer), String> {
    let url = traces_url(endpoint)?;
    let client = OwnRuntimeClient::new()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(client)
        .build()
        .map_err(|e| format!("OTLP exporter for {url}: {e}"))?;
    let queue = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let batch = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(queue)
            .build(),
    )
    .build();
    let resource = Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attribute(KeyValue::new("service.instance.id", worker_id.to_owned()))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Admission {
            inner: batch,
            queued,
            capacity: queue,
        })
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(SERVICE_NAME);
    Ok((provider, tracer))
}

/// Admits a finished span to the batch queue while fewer than `capacity` are queued or being
/// exported; drops (and counts) it otherwise. Never blocks.
#[derive(Debug)]
struct Admission {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for Admission {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return; // the batch processor would discard it anyway
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            count_dropped(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, releasing queue slots as batches leave and counting failed batches.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let r = self.inner.export(batch).await;
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            });
        if r.is_err() {
            count_dropped(n);
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// opentelemetry-http's Hyper client (plain HTTP or rustls HTTPS), driven by a private
/// one-thread Tokio runtime: the batch processor calls it from a plain thread.
#[derive(Debug)]
struct OwnRuntimeClient {
    client: Arc<opentelemetry_http::hyper::HyperClient<Connector>>,
    /// `Option` so that `Drop` can hand it back without blocking (it may be dropped on any
    /// thread, inside a runtime or not).
    rt: Option<tokio::runtime::Runtime>,
}

impl OwnRuntimeClient {
    fn new() -> Result<OwnRuntimeClient, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otel-export")
            .enable_all()
            .build()
            .map_err(|e| format!("OTLP export runtime: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("OTLP TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(EXPORT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // The Hyper client spawns its connection tasks on the current runtime: build it there.
        let client = {
            let _in_rt = rt.enter();
            opentelemetry_http::hyper::HyperClient::new(https, EXPORT_TIMEOUT, None)
        };
        Ok(OwnRuntimeClient {
            client: Arc::new(client),
            rt: Some(rt),
        })
    }
}

impl HttpClient for OwnRuntimeClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let task = self
            .rt
            .as_ref()
            .map(|rt| rt.spawn(async move { client.send_bytes(request).await }));
        Box::pin(async move {
            match task {
                Some(t) => t.await.map_err(|e| Box::new(e) as HttpError)?,
                None => Err("OTLP export runtime stopped".into()),
            }
        })
    }
}

impl Drop for OwnRuntimeClient {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_w3c_trace_id_becomes_the_remote_parent() {
        let sc = remote_parent("4bf92f3577b34da6a3ce929d0e0e4736").expect("parent");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        let same = remote_parent("4BF92F3577B34DA6A3CE929D0E0E4736").expect("upper case");
        assert_eq!(same.span_id(), sc.span_id(), "derived parent is stable");
        let tp = remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("traceparent");
        assert_eq!(tp.span_id().to_string(), "00f067aa0ba902b7");
        for bad in [
            "trace-abc",
            "",
            "00000000000000000000000000000000",
            "4bf92f3577b34da6a3ce929d0e0e473",
            "zz",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            assert!(remote_parent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(
            traces_url("http://localhost:4318").as_deref(),
            Ok("http://localhost:4318/v1/traces")
        );
        assert_eq!(
            traces_url("http://c:4318/").as_deref(),
            Ok("http://c:4318/v1/traces")
        );
        assert_eq!(
            traces_url("https://c/v1/traces").as_deref(),
            Ok("https://c/v1/traces")
        );
        assert!(traces_url("localhost:4318").is_err());
    }

    /// A `Traces` over an in-memory exporter, as `start` builds it but without HTTP.
    fn in_memory() -> (Traces, opentelemetry_sdk::trace::InMemorySpanExporter) {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
            .build();
        let tracer = provider.tracer(SERVICE_NAME);
        EXPORTING.store(true, Ordering::Relaxed);
        (
            Traces {
                provider: Some(provider),
                tracer: Some(tracer),
                problem: None,
            },
            exporter,
        )
    }

    fn attr(s: &SpanData, key: &str) -> Option<String> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    #[test]
    fn the_pipelines_spans_continue_the_routers_trace() {
        use tracing::Instrument as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let (traces, exporter) = in_memory();
        let subscriber = tracing_subscriber::registry().with(traces.layer());
        tracing::subscriber::with_default(subscriber, || {
            // Shaped like runtime/pipeline.rs.
            let receive = tracing::info_span!(
                "worker.assignment.receive",
                tenant_id = "t-1",
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                run_id = "run-1",
                block_type = "fs.put",
                worker_id = "w-1",
                assignment_id = "a-1"
            );
            continue_trace(&receive, Some("4bf92f3577b34da6a3ce929d0e0e4736"));
            let execute = tracing::info_span!(parent: &receive, "worker.block.execute", tenant_id = "t-1",
                block_type = "fs.put", worker_id = "w-1");
            futures::executor::block_on(async {}.instrument(execute));
            receive.in_scope(|| {
                let publish = tracing::info_span!(
                    "worker.result.publish",
                    tenant_id = "t-1",
                    worker_id = "w-1"
                );
                let _e = publish.enter();
                tracing::info!(password = "hunter2", "an event: never exported");
            });
            let tp = traceparent(&receive).expect("exporting");
            assert!(
                tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{tp}"
            );
            // Unrelated: its own trace.
            let _other =
                tracing::info_span!("worker.assignment.receive", trace_id = "trace-abc").entered();
        });
        let spans = exporter.get_finished_spans().expect("spans");
        drop(traces);
        let named = |n: &str| {
            spans
                .iter()
                .find(|s| s.name == n)
                .unwrap_or_else(|| panic!("no {n} in {spans:?}"))
        };
        let receive = spans
            .iter()
            .find(|s| attr(s, "assignment_id").as_deref() == Some("a-1"))
            .expect("the receive span");
        assert_eq!(receive.name, "worker.assignment.receive");
        let execute = named("worker.block.execute");
        let publish = named("worker.result.publish");
        for s in [receive, execute, publish] {
            assert_eq!(
                s.span_context.trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{}",
                s.name
            );
            assert_eq!(attr(s, "tenant_id").as_deref(), Some("t-1"));
            assert_eq!(attr(s, "worker_id").as_deref(), Some("w-1"));
            assert!(
                s.events.is_empty(),
                "events are not exported: {:?}",
                s.events
            );
        }
        assert!(receive.parent_span_is_remote);
        assert_eq!(execute.parent_span_id, receive.span_context.span_id());
        assert_eq!(publish.parent_span_id, receive.span_context.span_id());
        assert_eq!(attr(receive, "run_id").as_deref(), Some("run-1"));
        assert_eq!(attr(receive, "block_type").as_deref(), Some("fs.put"));
        let other = spans
            .iter()
            .filter(|s| s.name == "worker.assignment.receive")
            .count();
        assert_eq!(other, 2);
    }

    #[derive(Debug)]
    struct Failing;

    impl SpanExporter for Failing {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                "collector down".into(),
            ))
        }
    }

    #[test]
    fn a_full_queue_and_a_failed_export_count_as_dropped() {
        let before = spans_dropped();
        let queued = Arc::new(AtomicUsize::new(0));
        let batch = BatchSpanProcessor::builder(Counted {
            inner: Failing,
            queued: queued.clone(),
        })
        // The SDK's own queue is larger than admission's bound, so its batch size (clamped
        // to its queue) is never reached by two spans: no export starts on its thread
        // before the flush below (with a queue of 2 it could, between two `end`s, freeing
        // admission slots and making the count racy).
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(64)
                .with_max_export_batch_size(64)
                .with_scheduled_delay(Duration::from_secs(3600))
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Admission {
                inner: batch,
                queued: queued.clone(),
                capacity: 2,
            })
            .build();
        let tracer = provider.tracer("t");
        for _ in 0..5 {
            use opentelemetry::trace::{Span as _, Tracer as _};
            tracer.start("s").end();
        }
        // Three refused at admission; the two queued fail to export at the flush.
        assert_eq!(spans_dropped() - before, 3);
        let _ = provider.force_flush();
        assert_eq!(spans_dropped() - before, 5);
        assert_eq!(queued.load(Ordering::Relaxed), 0);
        let _ = provider.shutdown();
    }

    #[test]
    fn no_endpoint_installs_nothing() {
        let t = Traces::default();
        assert!(!t.is_exporting());
        assert!(t.layer::<tracing_subscriber::Registry>().is_none());
        let span = tracing::info_span!("x");
        continue_trace(&span, Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(traceparent(&span).is_none());
    }
}
