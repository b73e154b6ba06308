//! The third stage of the configuration (after flags and [`Config`]): the working
//! objects, made from the `Config` in the order each needs the others. The run loop
//! (`super::run`) starts the tasks and drains at the stop.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::probe::WorkerProbe;
use super::{setup, AppError};
use crate::config::{Config, ConsumerMode, FsBackend};
use crate::contract::ParseLimits;
use crate::runtime::{Approvals, Cancels, Dedupe, Runtime, Shared};
use crate::telemetry::Metrics;
use crate::transport::{self, Connection, JetStreamHandles, Publisher};

/// A started worker: every component, and the control connection.
pub(super) struct Worker {
    pub(super) cfg: Arc<Config>,
    /// Cancelled at the stop: the HTTP endpoints and the control tasks end.
    pub(super) stop: CancellationToken,
    /// Sandbox mode's throw-away file root, removed when dropped (last, at the stop).
    pub(super) sandbox_dir: Option<tempfile::TempDir>,
    pub(super) io: beamline_io::IoPool,
    pub(super) client: Connection,
    pub(super) publisher: Publisher,
    pub(super) js: Option<JetStreamHandles>,
    pub(super) probe: Arc<WorkerProbe>,
    pub(super) shared: Arc<Shared>,
    pub(super) runtime: Arc<Runtime>,
    pub(super) metrics_addr: std::net::SocketAddr,
    pub(super) health_addr: Option<std::net::SocketAddr>,
}

impl Worker {
    /// Builds every component; `None` when a stop signal came while JetStream was being
    /// bound (NATS not up yet).
    pub(super) async fn build(
        cfg: Config,
        stop_requested: &CancellationToken,
    ) -> Result<Option<Worker>, AppError> {
        let cfg = Arc::new(cfg);
        let metrics = Arc::new(Metrics::new());
        crate::telemetry::trace::bind_metrics(&metrics);
        let stop = CancellationToken::new();
        let (sandbox_dir, fs_root) = fs_root(&cfg)?;
        let io = start_io(&cfg, &metrics)?;

        let client = transport::connect(&cfg, metrics.clone(), transport::Role::Control).await?;
        // API calls (the result bucket included) give up after 1.5 s and are retried, so a
        // leader change costs about that, not the client's default 5 s per call.
        let js_ctx = transport::jetstream_context(client.clone(), Duration::from_millis(1500));
        let publisher_js = (cfg.consumer == ConsumerMode::Jetstream).then(|| js_ctx.clone());
        let publisher = Publisher::new(
            client.clone(),
            publisher_js,
            cfg.subjects.clone(),
            metrics.clone(),
        );
        let probe = Arc::new(WorkerProbe::new(
            publisher.clone(),
            metrics.clone(),
            cfg.max_memory_mb,
        ));
        let (metrics_addr, health_addr) = serve_http(&cfg, &metrics, &probe, &stop).await?;

        // JetStream objects: NATS may still be coming up, so retry until bound or stopped.
        let js = if cfg.consumer == ConsumerMode::Jetstream {
            let Some(h) = bind_until_stopped(&cfg, js_ctx, stop_requested).await else {
                return Ok(None);
            };
            Some(h)
        } else {
            None
        };
        let publisher = match &js {
            Some(h) if !h.outputs_durable => {
                Publisher::new(client.clone(), None, cfg.subjects.clone(), metrics.clone())
            }
            _ => publisher,
        };
        let gpu = start_gpu(&cfg, &metrics)?;
        let shared = shared(
            &cfg,
            &metrics,
            &publisher,
            js.as_ref(),
            io.clone(),
            gpu,
            fs_root,
        );
        let runtime = Runtime::start(shared.clone(), js.clone())?;
        let _ = probe.runtime.set(runtime.clone());
        Ok(Some(Worker {
            cfg,
            stop,
            sandbox_dir,
            io,
            client,
            publisher,
            js,
            probe,
            shared,
            runtime,
            metrics_addr,
            health_addr,
        }))
    }
}

/// The FS root in use: `--fs-root`, or in sandbox mode a throw-away one (removed when the
/// returned directory is dropped).
fn fs_root(cfg: &Config) -> Result<(Option<tempfile::TempDir>, PathBuf), AppError> {
    let sandbox_dir = if cfg.sandbox {
        Some(
            tempfile::Builder::new()
                .prefix("beamline-sandbox-")
                .tempdir()
                .map_err(setup("sandbox root"))?,
        )
    } else {
        None
    };
    let fs_root = match &sandbox_dir {
        Some(d) => d.path().to_path_buf(),
        None => cfg.fs_root.clone(),
    };
    std::fs::create_dir_all(&fs_root).map_err(setup(format!("--fs-root {}", fs_root.display())))?;
    Ok((sandbox_dir, fs_root))
}

/// The IO pool (`fs.*` blocks) on the backend `--fs-backend` asks for.
fn start_io(cfg: &Config, metrics: &Metrics) -> Result<beamline_io::IoPool, AppError> {
    let io = beamline_io::IoPool::start(beamline_io::IoConfig {
        threads: cfg.io_pool_size,
        cores: cfg.io_cores.clone(),
        queue_capacity: cfg.queue_capacity,
        ring_entries: 256,
        force_backend: match cfg.fs_backend {
            FsBackend::Auto => None,
            FsBackend::IoUring => Some(beamline_io::Backend::Uring),
            FsBackend::Threads => Some(beamline_io::Backend::Threads),
        },
        max_file_bytes: cfg.fs_max_bytes,
    })
    .map_err(setup("starting the IO pool"))?;
    if cfg.fs_backend == FsBackend::IoUring && io.backend() != beamline_io::Backend::Uring {
        let why = "io_uring is not available on this kernel";
        return Err(setup("--fs-backend io_uring")(why));
    }
    metrics
        .fs_backend
        .with_label_values(&[io.backend().as_str()])
        .set(1);
    Ok(io)
}

/// `/metrics` and `/_health` on `--prometheus-endpoint`, `/_health` again on
/// `--health-endpoint`; the addresses bound.
async fn serve_http(
    cfg: &Config,
    metrics: &Arc<Metrics>,
    probe: &Arc<WorkerProbe>,
    stop: &CancellationToken,
) -> Result<(std::net::SocketAddr, Option<std::net::SocketAddr>), AppError> {
    let metrics_addr = crate::telemetry::http::serve(
        cfg.prometheus_endpoint,
        Some(metrics.clone()),
        probe.clone(),
        stop.clone(),
    )
    .await
    .map_err(setup(format!(
        "--prometheus-endpoint {}",
        cfg.prometheus_endpoint
    )))?;
    let health_addr = match cfg.health_endpoint {
        Some(a) => Some(
            crate::telemetry::http::serve(a, None, probe.clone(), stop.clone())
                .await
                .map_err(setup(format!("--health-endpoint {a}")))?,
        ),
        None => None,
    };
    Ok((metrics_addr, health_addr))
}

/// Binds the JetStream objects, retrying with backoff (up to 2 s) until bound; `None`
/// when a stop signal comes first.
async fn bind_until_stopped(
    cfg: &Config,
    js_ctx: transport::JetStreamContext,
    stop_requested: &CancellationToken,
) -> Option<JetStreamHandles> {
    let mut delay = Duration::from_millis(100);
    loop {
        let bound = tokio::select! {
            r = transport::bind_jetstream(cfg, js_ctx.clone()) => r,
            _ = stop_requested.cancelled() => return None,
        };
        match bound {
            Ok(h) => return Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "binding JetStream failed; retrying");
                tokio::select! {
                    _ = stop_requested.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The GPU pool. Device discovery: no GPU or no driver is the CPU fallback (logged
/// once), not an error.
fn start_gpu(cfg: &Config, metrics: &Metrics) -> Result<Arc<beamline_gpu::Scheduler>, AppError> {
    let gpu = Arc::new(
        beamline_gpu::Scheduler::start_pinned(
            beamline_gpu::SchedulerConfig {
                gpu_slots: cfg.gpu_pool_size,
                cpu_slots: cfg.cpu_pool_size,
                cpu_threads: cfg.cpu_pool_size,
                max_batch_size: cfg.gpu_max_batch_size,
                max_queue_delay: cfg.gpu_max_queue_delay,
                device_memory_budget: cfg.gpu_memory_budget_mb << 20,
                host_cache_budget: cfg.gpu_memory_budget_mb << 20,
            },
            cfg.gpu_cores.clone(),
        )
        .map_err(setup("starting the GPU pool"))?,
    );
    metrics.gpu_devices.set(gpu.devices().len() as i64);
    Ok(gpu)
}

/// What every CPU thread shares, with the memory budget split between its parts.
fn shared(
    cfg: &Arc<Config>,
    metrics: &Arc<Metrics>,
    publisher: &Publisher,
    js: Option<&JetStreamHandles>,
    io: beamline_io::IoPool,
    gpu: Arc<beamline_gpu::Scheduler>,
    fs_root: PathBuf,
) -> Arc<Shared> {
    // JetStream intake slots: what the pools hold, and no more than the memory budget
    // carries. An assignment held costs the process ~40 KiB with an 8 KiB payload
    // (docs/RELIABILITY.md F5): one slot per 128 KiB of the budget.
    let by_memory = ((cfg.max_memory_mb << 20) / (128 << 10)) as usize;
    let slots = (cfg.cpu_pool_size * cfg.max_in_flight + cfg.queue_capacity / 2)
        .min(by_memory)
        .max(1);
    let kv = js.and_then(|h| h.results.clone());
    Arc::new(Shared {
        config: cfg.clone(),
        metrics: metrics.clone(),
        publisher: publisher.clone(),
        // Finished results kept for dedupe: a sixteenth of the memory budget (128 MiB of the
        // default 2 GiB), so the store's share is counted inside --max-memory-mb.
        dedupe: Dedupe::new(
            kv.clone(),
            cfg.dedupe_ttl,
            100_000,
            ((cfg.max_memory_mb << 20) / 16) as usize,
        ),
        cancels: Cancels::default(),
        approvals: Approvals::default(),
        approval_kv: kv,
        io,
        gpu,
        fs_root,
        limits: ParseLimits {
            default_timeout: cfg.default_timeout,
            max_timeout: cfg.max_job_time,
        },
        stopping: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
        // Payload bytes taken in and not finished: an eighth of the memory budget (a
        // payload costs the process about four times its size while it runs: parse copy,
        // read buffers, result), so a flood of large assignments stays under the budget.
        intake: transport::IntakeBudget::new(
            slots,
            (cfg.max_memory_mb << 20) / 8,
            cfg.cpu_pool_size,
        ),
        // Core mode: the queue group starts with `--min-lanes` lanes; JetStream lanes all
        // pull from the start.
        lanes: Arc::new(transport::LaneScale::new(
            cfg.cpu_pool_size,
            match cfg.consumer {
                ConsumerMode::Core => cfg.min_lanes,
                ConsumerMode::Jetstream => cfg.cpu_pool_size,
            },
            metrics.lanes_active.clone(),
        )),
        // Already over at start (a budget below what the process needs): refuse from the
        // first assignment, not only from the memory watcher's first sample.
        over_memory: std::sync::atomic::AtomicBool::new(
            crate::telemetry::metrics::process_usage()
                .is_some_and(|(_, rss)| rss > cfg.max_memory_mb << 20),
        ),
        quotas: crate::runtime::quota::Quotas::new(cfg.tenant_max_in_flight)
            .with_rate(cfg.tenant_rate_limit, cfg.tenant_rate_burst),
    })
}
