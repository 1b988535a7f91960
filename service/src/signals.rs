//! Shutdown signals: the kubelet stops a pod with SIGTERM; a developer with Ctrl-C.

/// Resolves at the first SIGTERM or SIGINT. If SIGTERM cannot be watched (no signal support in
/// this process), only Ctrl-C ends it, and the failure is logged.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown signal received");
}
