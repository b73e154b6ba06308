//! Wiring: builds every component from the [`Config`] and runs until SIGTERM/SIGINT.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConsumerMode, FsBackend};
use crate::contract::ParseLimits;
use crate::runtime::{Approvals, Cancels, Dedupe, Runtime, Shared};
use crate::telemetry::http::{Indicator, Probe, RecentErrors};
use crate::telemetry::Metrics;
use crate::transport::{self, Publisher};

/// Health indicators of a running worker.
#[derive(Debug)]
struct WorkerProbe {
    publisher: Publisher,
    runtime: OnceLock<Arc<Runtime>>,
    metrics: Arc<Metrics>,
    max_memory_mb: u64,
    /// (panics seen, when the count last grew)
    critical: RecentErrors,
    /// (intake drops seen, when the count last grew)
    intake_drops: RecentErrors,
}

const CRITICAL_WINDOW: Duration = Duration::from_secs(60);
/// Health fails this long after a lane's subscription dropped an assignment (core flood).
const INTAKE_WINDOW: Duration = Duration::from_secs(10);
/// A lane connection down this long fails health (a reconnect takes ≤ 2 s per attempt).
const LANE_GRACE: Duration = Duration::from_secs(3);

/// Every NATS connection: the control connection must be up; an intake lane may be down
/// for [`LANE_GRACE`] (a broker restart) before health fails, naming it.
fn connections_indicator(publisher: &Publisher, metrics: &Metrics) -> (bool, String) {
    let mut down = Vec::new();
    if !publisher.is_connected() {
        down.push("control not connected".to_owned());
    }
    for c in metrics.connections.snapshot() {
        if c.name != "control" && !c.up && c.for_ >= LANE_GRACE {
            down.push(format!("{} down for {} s", c.name, c.for_.as_secs()));
        }
    }
    if down.is_empty() {
        (true, "connected".into())
    } else {
        (false, down.join(", "))
    }
}

impl Probe for WorkerProbe {
    fn indicators(&self) -> Vec<Indicator> {
        let (nats, nats_detail) = connections_indicator(&self.publisher, &self.metrics);
        let (pools_ok, pools_detail) = match self.runtime.get() {
            None => (false, "starting".to_owned()),
            Some(rt) => rt.pools_indicator(),
        };
        let rss_mb = crate::telemetry::metrics::process_usage().map_or(0, |(_, rss)| rss >> 20);
        let mem_ok = rss_mb <= self.max_memory_mb;
        let panics = self.metrics.panics.get();
        let critical_ok = self.critical.ok(panics);
        let dropped = self.metrics.intake_dropped.get();
        let intake_ok = self.intake_drops.ok(dropped);
        vec![
            Indicator {
                name: "nats_connection",
                ok: nats,
                detail: nats_detail,
            },
            Indicator {
                name: "resource_pools",
                ok: pools_ok,
                detail: pools_detail,
            },
            Indicator {
                name: "memory",
                ok: mem_ok,
                detail: format!("{rss_mb} MiB of {} MiB", self.max_memory_mb),
            },
            Indicator {
                name: "critical_errors",
                ok: critical_ok,
                detail: if critical_ok {
                    "none recently".into()
                } else {
                    "a block panicked in the last 60 s".into()
                },
            },
            Indicator {
                name: "intake",
                ok: intake_ok,
                detail: if intake_ok {
                    format!(
                        "no assignment dropped in the last {} s",
                        INTAKE_WINDOW.as_secs()
                    )
                } else {
                    format!(
                        "assignments dropped over the intake byte bound in the last {} s ({dropped} since start)",
                        INTAKE_WINDOW.as_secs()
                    )
                },
            },
        ]
    }

    fn sample(&self) {
        if let Some(rt) = self.runtime.get() {
            rt.sample();
        }
    }
}

/// Runs the worker until a stop signal; returns when it has drained.
pub async fn run(cfg: Config) -> Result<(), String> {
    let cfg = Arc::new(cfg);
    let metrics = Arc::new(Metrics::new());
    crate::telemetry::trace::bind_metrics(&metrics);
    let stop = CancellationToken::new();

    // Sandbox mode: files go to a throw-away root, removed at exit.
    let sandbox_dir = if cfg.sandbox {
        Some(
            tempfile::Builder::new()
                .prefix("beamline-sandbox-")
                .tempdir()
                .map_err(|e| format!("sandbox root: {e}"))?,
        )
    } else {
        None
    };
    let fs_root = match &sandbox_dir {
        Some(d) => d.path().to_path_buf(),
        None => cfg.fs_root.clone(),
    };
    std::fs::create_dir_all(&fs_root)
        .map_err(|e| format!("--fs-root {}: {e}", fs_root.display()))?;

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
    .map_err(|e| format!("starting the IO pool: {e}"))?;
    if cfg.fs_backend == FsBackend::IoUring && io.backend() != beamline_io::Backend::Uring {
        return Err("--fs-backend io_uring: io_uring is not available on this kernel".into());
    }
    metrics
        .fs_backend
        .with_label_values(&[io.backend().as_str()])
        .set(1);

    let client = transport::connect(&cfg, metrics.clone(), transport::Role::Control)
        .await
        .map_err(|e| e.to_string())?;
    // API calls (the result bucket included) give up after 1.5 s and are retried, so a
    // leader change costs about that, not the client's default 5 s per call.
    let js_ctx = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(1500))
        .build(client.clone());
    let publisher_js = (cfg.consumer == ConsumerMode::Jetstream).then(|| js_ctx.clone());
    let publisher = Publisher::new(
        client.clone(),
        publisher_js,
        cfg.subjects.clone(),
        metrics.clone(),
    );

    let probe = Arc::new(WorkerProbe {
        publisher: publisher.clone(),
        runtime: OnceLock::new(),
        metrics: metrics.clone(),
        max_memory_mb: cfg.max_memory_mb,
        critical: RecentErrors::new(CRITICAL_WINDOW),
        intake_drops: RecentErrors::new(INTAKE_WINDOW),
    });
    let metrics_addr = crate::telemetry::http::serve(
        cfg.prometheus_endpoint,
        Some(metrics.clone()),
        probe.clone(),
        stop.clone(),
    )
    .await
    .map_err(|e| format!("--prometheus-endpoint {}: {e}", cfg.prometheus_endpoint))?;
    let health_addr = match cfg.health_endpoint {
        Some(a) => Some(
            crate::telemetry::http::serve(a, None, probe.clone(), stop.clone())
                .await
                .map_err(|e| format!("--health-endpoint {a}: {e}"))?,
        ),
        None => None,
    };

    // JetStream objects: NATS may still be coming up, so retry until bound or stopped.
    let js = if cfg.consumer == ConsumerMode::Jetstream {
        let mut delay = Duration::from_millis(100);
        loop {
            match transport::bind_jetstream(&cfg, js_ctx.clone()).await {
                Ok(h) => break Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "binding JetStream failed; retrying");
                    tokio::select! {
                        _ = shutdown_signal() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    } else {
        None
    };
    let publisher = match &js {
        Some(h) if !h.outputs_durable => {
            Publisher::new(client.clone(), None, cfg.subjects.clone(), metrics.clone())
        }
        _ => publisher,
    };

    // JetStream intake slots: what the pools hold, and no more than the memory budget
    // carries. An assignment held costs the process ~40 KiB with an 8 KiB payload
    // (docs/RELIABILITY.md F5): one slot per 128 KiB of the budget.
    let by_memory = ((cfg.max_memory_mb << 20) / (128 << 10)) as usize;
    let slots = (cfg.cpu_pool_size * cfg.max_in_flight + cfg.queue_capacity / 2)
        .min(by_memory)
        .max(1);
    let kv = js.as_ref().and_then(|h| h.results.clone());
    // Device discovery: no GPU or no driver is the CPU fallback (logged once), not an error.
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
        .map_err(|e| format!("starting the GPU pool: {e}"))?,
    );
    metrics.gpu_devices.set(gpu.devices().len() as i64);
    let shared = Arc::new(Shared {
        config: cfg.clone(),
        metrics: metrics.clone(),
        publisher: publisher.clone(),
        // Finished results kept for dedupe: a sixteenth of the memory budget (128 MiB of the
        // default 2 GiB), so the store's share is counted inside --max-memory-mb.
        dedupe: Dedupe::new(kv.clone(), cfg.dedupe_ttl, 100_000)
            .with_byte_budget(((cfg.max_memory_mb << 20) / 16) as usize),
        cancels: Cancels::default(),
        approvals: Approvals::default(),
        approval_kv: kv,
        io: io.clone(),
        gpu: gpu.clone(),
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
        // Already over at start (a budget below what the process needs): refuse from the
        // first assignment, not only from the memory watcher's first sample.
        over_memory: std::sync::atomic::AtomicBool::new(
            crate::telemetry::metrics::process_usage()
                .is_some_and(|(_, rss)| rss > cfg.max_memory_mb << 20),
        ),
        quotas: crate::runtime::quota::Quotas::new(cfg.tenant_max_in_flight)
            .with_rate(cfg.tenant_rate_limit, cfg.tenant_rate_burst),
    });
    let runtime = Runtime::start(shared.clone(), js.clone())?;
    let _ = probe.runtime.set(runtime.clone());

    tracing::info!(
        worker_id = %cfg.worker_id,
        consumer = if cfg.consumer == ConsumerMode::Jetstream { "jetstream" } else { "core" },
        nats_url = %cfg.nats_url,
        cpu_pool_size = cfg.cpu_pool_size,
        cpu_cores = ?cfg.cpu_cores,
        io_pool_size = cfg.io_pool_size,
        io_cores = ?cfg.io_cores,
        fs_backend = io.backend().as_str(),
        metrics_endpoint = %metrics_addr,
        health_endpoint = health_addr.map(|a| a.to_string()),
        profile = cfg.profile_name.as_deref(),
        sandbox = cfg.sandbox,
        "worker started"
    );
    // systemd Type=notify: READY=1 once the health check is green, then watchdog pings.
    let ready_probe = probe.clone();
    let _notify = tokio::spawn(crate::systemd::notify_when_ready(
        move || ready_probe.indicators().iter().all(|i| i.ok),
        stop.clone(),
    ));

    let control = tokio::spawn(transport::consume_control(
        client.clone(),
        cfg.subjects.clone(),
        js.clone(),
        runtime.clone(),
        stop.clone(),
    ));
    let memory = tokio::spawn(watch_memory(shared.clone(), stop.clone()));
    let heartbeat = tokio::spawn(heartbeats(
        cfg.clone(),
        publisher.clone(),
        runtime.clone(),
        probe.clone(),
        stop.clone(),
    ));

    shutdown_signal().await;
    tracing::info!(
        grace_ms = cfg.shutdown_grace.as_millis() as u64,
        "stop requested: draining"
    );
    // The whole stop ends within the grace period whatever the broker does: the CPU
    // threads get nine tenths of it (what they cannot answer or hand back by then is
    // dropped, logged and counted), the rest is for the control tasks and a last flush.
    let stop_by = tokio::time::Instant::now() + cfg.shutdown_grace;
    let left = move || {
        stop_by
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(100))
    };
    let rt = runtime.clone();
    let grace = cfg.shutdown_grace.mul_f64(0.9);
    let _ = tokio::task::spawn_blocking(move || rt.shutdown(grace)).await;
    stop.cancel();
    let _ = tokio::time::timeout(left(), async { tokio::join!(control, heartbeat, memory) }).await;
    io.shutdown();
    // A flush waits for the broker; with none there, what the client still holds is lost
    // (core: the Router's retry; JetStream: redelivered).
    if client.connection_state() != async_nats::connection::State::Connected {
        tracing::warn!("NATS unreachable at stop: nothing left to flush to");
    } else if tokio::time::timeout(left(), client.flush()).await.is_err() {
        tracing::warn!("NATS flush at stop timed out");
    }
    tracing::info!("worker stopped");
    drop(sandbox_dir);
    Ok(())
}

/// Samples RSS; over `--max-memory-mb` the worker stops pulling (JetStream) or answers
/// 4002 (core) until it is back under 90 % of the budget.
async fn watch_memory(shared: Arc<Shared>, stop: CancellationToken) {
    use std::sync::atomic::Ordering;
    let budget = shared.config.max_memory_mb << 20;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some((_, rss)) = crate::telemetry::metrics::process_usage() else {
            continue;
        };
        let over = shared.over_memory.load(Ordering::Relaxed);
        if !over && rss > budget {
            tracing::warn!(
                rss_mb = rss >> 20,
                budget_mb = budget >> 20,
                "over the memory budget: intake paused"
            );
            shared.over_memory.store(true, Ordering::Relaxed);
        } else if over && rss < budget / 10 * 9 {
            tracing::info!(
                rss_mb = rss >> 20,
                "back under the memory budget: intake resumed"
            );
            shared.over_memory.store(false, Ordering::Relaxed);
        }
    }
}

async fn heartbeats(
    cfg: Arc<Config>,
    publisher: Publisher,
    rt: Arc<Runtime>,
    probe: Arc<WorkerProbe>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.heartbeat_interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let healthy = probe.indicators().iter().all(|i| i.ok);
        let in_flight = rt.in_flight();
        let capacity = cfg.cpu_pool_size * cfg.max_in_flight;
        let status = if !healthy {
            "degraded"
        } else if in_flight * 10 >= capacity * 8 {
            "busy"
        } else {
            "ready"
        };
        let rss = crate::telemetry::metrics::process_usage().map_or(0, |(_, r)| r);
        let body = serde_json::json!({
            "version": "1",
            "worker_id": cfg.worker_id,
            "timestamp": crate::contract::wire::iso_now(),
            "status": status,
            "resources": {
                "cpu": cfg.cpu_pool_size,
                "gpu": rt.shared().gpu.devices().len(),
                "mem_bytes": rss,
                "jobs_in_flight": in_flight,
            },
            "metadata": {
                "consumer": format!("{:?}", cfg.consumer).to_lowercase(),
                "io_pool_size": cfg.io_pool_size,
                "max_memory_mb": cfg.max_memory_mb,
                "queue_depth": rt.queue_depth(),
                "version": env!("CARGO_PKG_VERSION"),
            },
        });
        let _ = publisher
            .publish_core(
                &cfg.subjects.heartbeat,
                bytes::Bytes::from(body.to_string()),
            )
            .await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
