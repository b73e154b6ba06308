//! # beamline_worker
//!
//! The execution worker of the CAF workflow platform: it takes `ExecAssignment`s from
//! NATS, acks them, runs the block, and publishes exactly one `ExecResult` each.
//!
//! # Layout
//! - [`contract`]: wire types only (assignment as read, ack/result/DLQ as written, codes).
//! - [`config`]: flags + environment + tuning profile → one validated [`config::Config`].
//! - [`host`]: the host's topology from sysfs, the cores placement may use (a leaf).
//! - [`plan`]: `beamline_worker plan`, the resolved thread placement as a table or JSON.
//! - [`app`]: builds the working objects from the `Config` and runs until a stop signal.
//! - [`transport`]: the only module that knows NATS (consume, ack policy, publish).
//! - [`runtime`]: pinned CPU threads, admission, the per-assignment pipeline, dedupe,
//!   cancel and approval registries, shutdown.
//! - [`blocks`]: one module per block type behind [`blocks::Block`].
//! - [`policy`]: guards the blocks share (SSRF, SQL read-only).
//! - [`telemetry`]: every metric name, spans, logs, the health/metrics endpoint.
#![forbid(unsafe_code)]

pub mod app;
pub mod blocks;
pub mod config;
pub mod contract;
pub mod host;
pub mod plan;
pub mod policy;
pub mod runtime;
pub mod systemd;
pub mod telemetry;
pub mod transport;
