//! systemd readiness and watchdog (`Type=notify`, ops/systemd/beamline-worker.service):
//! `READY=1` once NATS is connected, the streams are bound and the health check is green,
//! then `WATCHDOG=1` at half of `WatchdogSec` from the transport runtime, so a wedged
//! transport is restarted. Nothing is sent when `NOTIFY_SOCKET` is unset.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Waits for `healthy`, signals readiness, then keeps the watchdog fed until `stop`.
pub async fn notify_when_ready(healthy: impl Fn() -> bool, stop: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    while !healthy() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    if let Err(e) = sd_notify::notify(
        false,
        &[
            NotifyState::Ready,
            NotifyState::Status("connected, streams bound, healthy"),
        ],
    ) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_micros(usec / 2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
                return;
            }
            _ = tick.tick() => { let _ = sd_notify::notify(false, &[NotifyState::Watchdog]); }
        }
    }
}
