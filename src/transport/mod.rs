//! The only module that knows NATS: connecting (auth, TLS, reconnects), binding the
//! JetStream stream, durable consumer, output streams and buckets, consuming in either
//! mode, and publishing acks, results, DLQ entries and heartbeats. The runtime sees only
//! the types re-exported here.
//!
//! | file | what |
//! |---|---|
//! | `connect.rs` | connections ([`Role`]: control or lane N), buffers, reconnect policy |
//! | `lane.rs` | opens a CPU thread's intake lane: its connection, publisher, intake loop and results bucket |
//! | `core.rs` / `jetstream.rs` | the two intake loops (queue subscription / durable pull) |
//! | `scale.rs` | [`LaneScale`]: how many lanes are in the core queue group, by load |
//! | `delivery.rs` | [`Delivery`] (settle: ack, nak with delay, in progress) and [`Sink`] |
//! | `budget.rs` | [`IntakeBudget`]: slots and bytes a lane may take |
//! | `publish.rs` | [`Publisher`] (`Nats-Msg-Id`, publish-ack, retried through outages) |
//! | `bucket.rs` | [`Bucket`]: the key-value calls dedupe and approvals make |
//! | `control.rs` | cancel requests and approval decisions |
//! | `setup.rs` | binding or creating streams, consumer and buckets |
//! | `handles.rs` | the handles the app holds without naming a NATS type (connection, context) |

mod bucket;
mod budget;
mod connect;
mod control;
mod core;
mod delivery;
mod handles;
mod jetstream;
mod lane;
mod publish;
mod scale;
mod setup;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::telemetry::Metrics;

pub use bucket::{Bucket, BucketError};
pub use budget::IntakeBudget;
pub use connect::{connect, connect_with, Buffers, Role};
pub use control::consume_control;
pub use delivery::{Control, Delivery, Sink};
pub use handles::*;
pub use lane::{open_lane, Lane};
pub use publish::{Kind, Publisher};
pub use scale::LaneScale;
pub use setup::{bind_jetstream, JetStreamHandles};

/// Boxed cause of a transport failure (the client's own error types stay in here).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A NATS call that failed: what was being done, and the client's error as its source.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct TransportError {
    what: String,
    #[source]
    source: BoxError,
}

impl TransportError {
    pub(crate) fn new(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        TransportError {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// What one lane's intake loop works with (either mode).
#[derive(Clone)]
pub(crate) struct Intake {
    cfg: Arc<Config>,
    sink: Arc<dyn Sink>,
    budget: Arc<IntakeBudget>,
    metrics: Arc<Metrics>,
    publisher: Arc<Publisher>,
    stop: CancellationToken,
}
