//! The stop request: SIGTERM (systemd, Kubernetes) or SIGINT (a terminal).

use tokio_util::sync::CancellationToken;

/// Watches for the first SIGTERM or SIGINT (Ctrl-C where those cannot be watched) from now
/// on: the handlers are installed before this returns, and the token is cancelled at the
/// signal. One watch for the whole run: a listener made afresh in a retry loop missed
/// every signal that came while the loop was busy (a JetStream bind against a server that
/// is not there ignored SIGTERM for as long as it retried).
pub(super) fn watch_stop_signal() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let stop = token.clone();
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            stop.cancel();
        }),
        _ => tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        }),
    };
    token
}
