//! Metrics, logs, spans and the HTTP endpoints that expose them.

pub mod http;
pub mod logs;
pub mod metrics;
pub mod trace;

pub use metrics::{Intake, Metrics};
