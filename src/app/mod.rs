//! The worker's third stage (after flags and [`Config`]): `build.rs` makes the working
//! objects from the `Config`; [`run`] starts the control tasks, waits for SIGTERM/SIGINT
//! and drains. Beside them: the health probe (`probe.rs`), the memory watcher
//! (`memory.rs`), heartbeats (`heartbeat.rs`) and the stop signal (`signal.rs`).

mod build;
mod heartbeat;
mod memory;
mod probe;
mod signal;

pub use memory::no_huge_pages;

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::{Config, ConsumerMode};
use crate::transport;
use build::Worker;

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Something a flag names could not be set up: which, and the system's error.
    #[error("{what}: {source}")]
    Setup {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Nats(#[from] transport::TransportError),
    #[error(transparent)]
    CpuPool(#[from] crate::runtime::StartError),
}

/// Maps an error to [`AppError::Setup`] of `what`.
fn setup<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> AppError {
    let what = what.into();
    move |e| AppError::Setup {
        what,
        source: e.into(),
    }
}

/// Runs the worker until a stop signal; returns when it has drained.
pub async fn run(cfg: Config) -> Result<(), AppError> {
    let stop_requested = signal::watch_stop_signal();
    let Some(worker) = Worker::build(cfg, &stop_requested).await? else {
        return Ok(());
    };
    worker.log_started();
    let tasks = worker.spawn_tasks();
    stop_requested.cancelled().await;
    worker.drain(tasks).await;
    Ok(())
}

/// The control tasks, joined (bounded) at the stop.
struct Tasks {
    control: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    memory: JoinHandle<()>,
}

impl Worker {
    fn log_started(&self) {
        let cfg = &self.cfg;
        tracing::info!(
            worker_id = %cfg.worker_id,
            consumer = if cfg.consumer == ConsumerMode::Jetstream { "jetstream" } else { "core" },
            nats_url = %cfg.nats_url,
            cpu_pool_size = cfg.cpu_pool_size,
            cpu_cores = ?cfg.cpu_cores,
            io_pool_size = cfg.io_pool_size,
            io_cores = ?cfg.io_cores,
            fs_backend = self.io.backend().as_str(),
            metrics_endpoint = %self.metrics_addr,
            health_endpoint = self.health_addr.map(|a| a.to_string()),
            profile = cfg.profile_name.as_deref(),
            sandbox = cfg.sandbox,
            "worker started"
        );
    }

    /// systemd readiness, cancels/decisions/approvals, the memory watcher, heartbeats.
    fn spawn_tasks(&self) -> Tasks {
        // systemd Type=notify: READY=1 once the health check is green, then watchdog pings.
        let ready_probe = self.probe.clone();
        tokio::spawn(crate::systemd::notify_when_ready(
            move || ready_probe.healthy(),
            self.stop.clone(),
        ));
        Tasks {
            control: tokio::spawn(transport::consume_control(
                self.client.clone(),
                self.cfg.subjects.clone(),
                self.js.clone(),
                self.runtime.clone(),
                self.stop.clone(),
            )),
            memory: tokio::spawn(memory::watch_memory(self.shared.clone(), self.stop.clone())),
            heartbeat: tokio::spawn(heartbeat::heartbeats(
                self.cfg.clone(),
                self.publisher.clone(),
                self.runtime.clone(),
                self.probe.clone(),
                self.stop.clone(),
            )),
        }
    }

    /// The stop: ends within `--shutdown-grace-ms` whatever the broker does.
    async fn drain(self, tasks: Tasks) {
        let grace_total = self.cfg.shutdown_grace;
        tracing::info!(
            grace_ms = grace_total.as_millis() as u64,
            "stop requested: draining"
        );
        // The CPU threads get nine tenths of the grace period (what they cannot answer or
        // hand back by then is dropped, logged and counted), the rest is for the control
        // tasks and a last flush.
        let stop_by = tokio::time::Instant::now() + grace_total;
        let left = move || {
            stop_by
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_millis(100))
        };
        let rt = self.runtime.clone();
        let grace = grace_total.mul_f64(0.9);
        let _ = tokio::task::spawn_blocking(move || rt.shutdown(grace)).await;
        self.stop.cancel();
        let Tasks {
            control,
            heartbeat,
            memory,
        } = tasks;
        let _ =
            tokio::time::timeout(left(), async { tokio::join!(control, heartbeat, memory) }).await;
        self.io.shutdown();
        // A flush waits for the broker; with none there, what the client still holds is lost
        // (core: the Router's retry; JetStream: redelivered).
        if !transport::is_connected(&self.client) {
            tracing::warn!("NATS unreachable at stop: nothing left to flush to");
        } else if tokio::time::timeout(left(), transport::flush(&self.client))
            .await
            .is_err()
        {
            tracing::warn!("NATS flush at stop timed out");
        }
        tracing::info!("worker stopped");
        drop(self.sandbox_dir);
    }
}
