//! The worker's health: what `/_health`, the heartbeat status and systemd readiness see.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::runtime::Runtime;
use crate::telemetry::http::{Indicator, Probe, RecentErrors};
use crate::telemetry::metrics::Intake;
use crate::telemetry::Metrics;
use crate::transport::Publisher;

const CRITICAL_WINDOW: Duration = Duration::from_secs(60);
/// Health fails this long after a lane's subscription dropped an assignment (core flood).
const INTAKE_WINDOW: Duration = Duration::from_secs(10);
/// A lane connection down this long fails health (a reconnect takes ≤ 2 s per attempt).
const LANE_GRACE: Duration = Duration::from_secs(3);

/// Health indicators of a running worker.
#[derive(Debug)]
pub(super) struct WorkerProbe {
    publisher: Publisher,
    /// Set once the runtime has started; until then the pools read "starting".
    pub(super) runtime: OnceLock<Arc<Runtime>>,
    metrics: Arc<Metrics>,
    max_memory_mb: u64,
    /// (panics seen, when the count last grew)
    critical: RecentErrors,
    /// (intake drops seen, when the count last grew)
    intake_drops: RecentErrors,
    /// (assignments refused as overloaded, 4002, when the count last grew)
    refusals: RecentErrors,
}

impl WorkerProbe {
    pub(super) fn new(publisher: Publisher, metrics: Arc<Metrics>, max_memory_mb: u64) -> Self {
        WorkerProbe {
            publisher,
            runtime: OnceLock::new(),
            metrics,
            max_memory_mb,
            critical: RecentErrors::new(CRITICAL_WINDOW),
            intake_drops: RecentErrors::new(INTAKE_WINDOW),
            refusals: RecentErrors::new(INTAKE_WINDOW),
        }
    }

    /// Every indicator is green.
    pub(super) fn healthy(&self) -> bool {
        self.indicators().iter().all(|i| i.ok)
    }
}

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
        let (mut pools_ok, mut pools_detail) = match self.runtime.get() {
            None => (false, "starting".to_owned()),
            Some(rt) => rt.pools_indicator(),
        };
        // A queue is full only for a moment at a time; a 4002 refusal says the pools were
        // overloaded, and health says so for a while after one.
        let refused = self.metrics.intake_count(Intake::Overloaded);
        if !self.refusals.ok(refused) {
            pools_ok = false;
            pools_detail = format!(
                "assignments refused as overloaded (4002) in the last {} s ({refused} since start); {pools_detail}",
                INTAKE_WINDOW.as_secs()
            );
        }
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
