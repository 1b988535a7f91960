//! `/metrics`, `/healthz` and `/readyz` on one plain-HTTP port (the agent's transfer server is
//! separate: TLS, its own port).
//!
//! `/healthz` answers as long as the process serves HTTP (the liveness probe); `/readyz` answers
//! 200 only while the binary's readiness flag is set, and 503 with the binary's reason
//! otherwise, so `kubectl describe pod` says why a replica is not Ready.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;

/// The content type of `/metrics`: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// A metrics registry that can render itself for a scrape.
pub trait Exposition: Send + Sync + 'static {
    /// The metrics in Prometheus text format (what `/metrics` returns).
    fn encode(&self) -> String;
}

/// Why the endpoints could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

/// The three endpoints and what they read.
#[derive(Clone)]
pub struct Endpoints {
    metrics: Arc<dyn Exposition>,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .field("not_ready", &self.not_ready)
            .finish_non_exhaustive()
    }
}

impl Endpoints {
    /// Endpoints that export `metrics` and report Ready while `ready` is set; `not_ready` is
    /// the body of a 503 from `/readyz`.
    pub fn new(
        metrics: Arc<dyn Exposition>,
        ready: Arc<AtomicBool>,
        not_ready: &'static str,
    ) -> Self {
        Endpoints {
            metrics,
            ready,
            not_ready,
        }
    }

    /// The router, for binaries and tests that serve it themselves.
    pub fn router(self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(self)
    }

    /// Binds `addr` and serves the endpoints until `shutdown` resolves (in-flight scrapes
    /// finish). Binding happens before this returns, so a taken port fails the start.
    pub async fn spawn<A>(
        self,
        addr: A,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<JoinHandle<()>, ServiceError>
    where
        A: ToSocketAddrs + std::fmt::Display,
    {
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServiceError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let app = self.router();
        Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "HTTP endpoints stopped");
            }
        }))
    }
}

async fn metrics(State(state): State<Endpoints>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

async fn readyz(State(state): State<Endpoints>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, state.not_ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fixed;
    impl Exposition for Fixed {
        fn encode(&self) -> String {
            "ferry_up 1\n".to_string()
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn endpoints_answer_over_a_real_socket_and_readyz_follows_the_flag() {
        let ready = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = Endpoints::new(Arc::new(Fixed), ready.clone(), "lease not renewed")
            .spawn(addr, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();

        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("lease not renewed"), "{r}");
        ready.store(true, Ordering::Relaxed);
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = get(addr, "/healthz").await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok"), "{r}");
        let r = get(addr, "/metrics").await;
        assert!(r.contains("text/plain; version=0.0.4"), "{r}");
        assert!(r.ends_with("ferry_up 1\n"), "{r}");

        stop_tx.send(()).unwrap();
        server.await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_taken_port_fails_the_start_with_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Endpoints::new(Arc::new(Fixed), Arc::default(), "x")
            .spawn(addr, std::future::pending())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
