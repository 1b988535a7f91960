//! The source side: serves published images from a [`Store`](crate::store::Store) to the agent
//! a grant names, over mutual TLS (or plain TCP, for the benchmark's baseline only).
//!
//! Bounded against a flood (docs/security.md, "Finding 4"): at most
//! [`ServerLimits::max_connections`] connections at once (more are closed on accept), a TLS
//! handshake and request headers within their time limits, no connection that moves no data
//! for [`ServerLimits::idle_timeout`] (a client that stops reading loses it), a request
//! without a bearer token refused before any grant lookup (lookups are cached, misses too,
//! and capped: `cluster::grants::CachedGrants`), refusals logged at most once per
//! [`LOG_EVERY`] with a count, and file data read by a bounded pool of blocking reads
//! ([`ServerLimits::disk_readers`]) into a few [`CHUNK`]s per response.
//!
//! - `idle`: the idle time limit on a socket.
//! - `limits`: [`ServerLimits`], [`TransferStats`] and what connections share.
//! - `body`: a file's response body and its reads.
//! - `routes`: one request, from URL and token to the bytes.

mod body;
mod idle;
mod limits;
mod routes;

use self::limits::Shared;
pub use self::limits::{CHUNK, CHUNKS_IN_FLIGHT, LOG_EVERY, ServerLimits, TransferStats};

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

use self::idle::IdleTimeout;
use self::limits::Throttle;
use super::tls::peer_fingerprint;
use super::token::GrantSource;
use crate::store::Stores;

/// How the server talks on its socket.
#[derive(Clone)]
pub enum ServerTransport {
    /// TLS with the agent's identity ([`super::NodeIdentity::server_config`]).
    Tls(Arc<rustls::ServerConfig>),
    /// Plain TCP: only for the benchmark's raw baseline; the agent never serves plain.
    Plain,
}

/// A running transfer server; dropping it does not stop it, [`TransferServer::shutdown`] does.
pub struct TransferServer {
    local_addr: SocketAddr,
    stats: Arc<TransferStats>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl TransferServer {
    /// Serves the images of `stores` (a grant names its store; none: the main one) on
    /// `listener`, authorizing with `grants`, with the default [`ServerLimits`]. Must be
    /// called inside a tokio runtime (it spawns the accept loop).
    pub fn spawn(
        listener: TcpListener,
        stores: impl Into<Stores>,
        grants: Arc<dyn GrantSource>,
        transport: ServerTransport,
    ) -> io::Result<Self> {
        Self::spawn_with_limits(listener, stores, grants, transport, ServerLimits::default())
    }

    /// [`TransferServer::spawn`] with `limits`.
    pub fn spawn_with_limits(
        listener: TcpListener,
        stores: impl Into<Stores>,
        grants: Arc<dyn GrantSource>,
        transport: ServerTransport,
        limits: ServerLimits,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        info!(
            addr = %local_addr,
            tls = matches!(transport, ServerTransport::Tls(_)),
            max_connections = limits.max_connections,
            idle_timeout_s = limits.idle_timeout.as_secs_f64(),
            "transfer server listening"
        );
        let stats = Arc::new(TransferStats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            stores: stores.into(),
            grants,
            stats: stats.clone(),
            limits,
            disk_pool: Arc::new(Semaphore::new(limits.disk_readers.max(1))),
            auth_log: Throttle::new(LOG_EVERY),
            lookup_log: Throttle::new(LOG_EVERY),
            connection_log: Throttle::new(LOG_EVERY),
        });
        let task = tokio::spawn(
            accept_loop(listener, shared, transport, shutdown_rx)
                .instrument(tracing::info_span!("transfer_server", addr = %local_addr)),
        );
        Ok(TransferServer {
            local_addr,
            stats,
            shutdown,
            task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<TransferStats> {
        self.stats.clone()
    }

    /// Stops accepting, lets in-flight responses finish (up to `grace`), then returns.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(grace, self.task).await.is_err() {
            abort.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    transport: ServerTransport,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = match &transport {
        ServerTransport::Tls(config) => Some(tokio_rustls::TlsAcceptor::from(config.clone())),
        ServerTransport::Plain => None,
    };
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections.max(1)));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the cap: closed at once, so a flood cannot hold the sockets and the memory of
        // unbounded connections (the refused client retries later).
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            if let Some(refused) = shared.connection_log.hit() {
                warn!(
                    refused,
                    max = shared.limits.max_connections,
                    "transfer connections refused: too many open"
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        let tcp = IdleTimeout::new(tcp, shared.limits.idle_timeout, shared.stats.clone());
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        connections.spawn(
            async move {
                let _slot = slot;
                let Some(acceptor) = acceptor else {
                    return serve_connection(tcp, shared, None, shutdown).await;
                };
                let handshake = acceptor.accept(tcp);
                match tokio::time::timeout(shared.limits.handshake_timeout, handshake).await {
                    Ok(Ok(tls)) => {
                        let fingerprint = peer_fingerprint(tls.get_ref().1);
                        serve_connection(tls, shared, fingerprint, shutdown).await
                    }
                    Ok(Err(e)) => {
                        shared
                            .stats
                            .handshake_failures
                            .fetch_add(1, Ordering::Relaxed);
                        debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        shared
                            .stats
                            .handshake_failures
                            .fetch_add(1, Ordering::Relaxed);
                        debug!("TLS handshake timed out");
                    }
                }
            }
            .instrument(tracing::debug_span!("transfer_connection", %peer)),
        );
        // Reap finished connections so the set does not grow with every client.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

/// Serves HTTP/1.1 on one connection whose client presented the certificate with SHA-256
/// `peer` (`None`: plain TCP).
async fn serve_connection<S>(
    stream: S,
    shared: Arc<Shared>,
    peer: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = shared.limits.header_timeout;
    let peer: Option<Arc<str>> = peer.map(Arc::from);
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let peer = peer.clone();
        async move {
            Ok::<_, std::convert::Infallible>(routes::handle(req, &shared, peer.as_deref()).await)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                debug!(error = %e, "connection ended with an error during shutdown");
            }
        }
    }
}
