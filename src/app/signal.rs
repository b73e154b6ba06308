//! The stop request: SIGTERM (systemd, Kubernetes) or SIGINT (a terminal).

/// Resolves at the first SIGTERM or SIGINT (Ctrl-C where those cannot be watched).
pub(super) async fn shutdown_signal() {
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
