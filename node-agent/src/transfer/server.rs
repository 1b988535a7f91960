//! The source side: serves published images from a [`Store`] to agents holding a valid
//! transfer token, over TLS (or plain TCP, for the benchmark's baseline only).
//!
//! Memory is bounded per response: a blocking thread reads the file in [`CHUNK`]-sized pieces
//! into a channel of [`CHUNKS_IN_FLIGHT`] slots, so a slow reader holds at most a few MiB.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

use super::http_paths::{self, DIGEST_HEADER, ERROR_HEADER, Route, RouteError, codes};
use super::token::{self, Denial, GrantSource};
use crate::store::{StoreError, Stores, validate_relative};

/// Bytes per read from disk (and per body frame).
pub const CHUNK: usize = 1 << 20;
/// Chunks read ahead per response.
pub const CHUNKS_IN_FLIGHT: usize = 4;
/// How long a client may take for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How the server talks on its socket.
#[derive(Clone)]
pub enum ServerTransport {
    /// TLS with the agent's identity ([`super::NodeIdentity::server_config`]).
    Tls(Arc<rustls::ServerConfig>),
    /// Plain TCP: only for the benchmark's raw baseline; the agent never serves plain.
    Plain,
}

/// Counters for the agent's metrics.
#[derive(Debug, Default)]
pub struct TransferStats {
    /// File and manifest bytes handed to connections.
    pub bytes_served: AtomicU64,
    /// Requests answered (any status).
    pub requests: AtomicU64,
    /// Requests refused for a missing, wrong or expired token.
    pub auth_failures: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections whose TLS handshake failed or timed out.
    pub handshake_failures: AtomicU64,
}

struct Shared {
    stores: Stores,
    grants: Arc<dyn GrantSource>,
    stats: Arc<TransferStats>,
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
    /// `listener`, authorizing with `grants`. Must be called
    /// inside a tokio runtime (it spawns the accept loop).
    pub fn spawn(
        listener: TcpListener,
        stores: impl Into<Stores>,
        grants: Arc<dyn GrantSource>,
        transport: ServerTransport,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        info!(
            addr = %local_addr,
            tls = matches!(transport, ServerTransport::Tls(_)),
            "transfer server listening"
        );
        let stats = Arc::new(TransferStats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            stores: stores.into(),
            grants,
            stats: stats.clone(),
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
        let _ = tcp.set_nodelay(true);
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        connections.spawn(
            async move {
                match acceptor {
                    Some(acceptor) => {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => serve_connection(tls, shared, shutdown).await,
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
                    None => serve_connection(tcp, shared, shutdown).await,
                }
            }
            .instrument(tracing::debug_span!("transfer_connection", %peer)),
        );
        // Reap finished connections so the set does not grow with every client.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<S>(stream: S, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, &shared).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
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

type ResponseBody = BoxBody<Bytes, io::Error>;

fn text(
    status: StatusCode,
    code: &'static str,
    reason: impl Into<String>,
) -> Response<ResponseBody> {
    let mut body = reason.into();
    body.push('\n');
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(ERROR_HEADER, HeaderValue::from_static(code));
    response
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Response<ResponseBody> {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    let response = route(&req, shared).await;
    // Log the path only: the Authorization header never reaches a log line.
    debug!(method = %req.method(), path = req.uri().path(), status = response.status().as_u16(), "transfer request");
    response
}

async fn route(req: &Request<Incoming>, shared: &Shared) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            codes::BAD_REQUEST,
            "only GET is served",
        );
    }
    let route = match http_paths::parse(req.uri().path()) {
        Ok(route) => route,
        Err(RouteError::NoRoute) => {
            return text(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such endpoint");
        }
        Err(RouteError::Bad(reason)) => {
            return text(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, reason);
        }
    };
    let (namespace, request) = match &route {
        Route::Manifest { namespace, request }
        | Route::File {
            namespace, request, ..
        } => (namespace.as_str(), request.as_str()),
    };
    let grant = match shared.grants.grant(namespace, request).await {
        Ok(grant) => grant,
        Err(e) => {
            warn!(namespace, request, error = %e, "transfer grant lookup failed");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::SOURCE_ERROR,
                "transfer grant lookup failed at the source; retry later",
            );
        }
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if let Err(denial) = token::check(authorization, grant.as_ref(), Timestamp::now()) {
        shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        return match denial {
            Denial::Unauthorized(why) => {
                warn!(
                    namespace,
                    request,
                    reason = why,
                    "transfer refused: bad token"
                );
                text(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED, why)
            }
            Denial::Expired(at) => {
                warn!(namespace, request, expired_at = %at, "transfer refused: token expired");
                text(
                    StatusCode::FORBIDDEN,
                    codes::EXPIRED,
                    format!("transfer token expired at {at}"),
                )
            }
        };
    }
    let Some(grant) = grant else {
        return text(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "invalid bearer token",
        );
    };
    if validate_relative(&grant.location).is_err() {
        return text(
            StatusCode::FORBIDDEN,
            codes::FORBIDDEN,
            "the token's image location is not a valid store location",
        );
    }
    // A pull is many requests; the image must outlive the gaps between them (GC spares it).
    let store = match shared.stores.for_host_path(grant.store.as_deref()) {
        Ok(store) => store,
        Err(e) => {
            warn!(namespace, request, error = %e, "transfer refused: store not served");
            return text(StatusCode::FORBIDDEN, codes::FORBIDDEN, e.to_string());
        }
    };
    let _ = store.touch(&grant.location);
    let image = match store.open_image(&grant.location) {
        Ok(image) => image,
        Err(StoreError::NotFound(_)) => {
            return text(
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                format!("no published image for {namespace}/{request}"),
            );
        }
        Err(e) => {
            warn!(namespace, request, error = %e, "cannot open image");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::SOURCE_ERROR,
                format!("cannot open the image: {e}"),
            );
        }
    };
    match route {
        Route::Manifest { .. } => {
            let len = image.manifest_bytes.len() as u64;
            shared.stats.bytes_served.fetch_add(len, Ordering::Relaxed);
            let mut response = Response::new(
                Full::new(Bytes::from(image.manifest_bytes))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            if let Ok(digest) = HeaderValue::from_str(&image.digest) {
                response.headers_mut().insert(DIGEST_HEADER, digest);
            }
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Route::File { ref path, .. } => {
            let Some(entry) = image.entry(path) else {
                return text(
                    StatusCode::NOT_FOUND,
                    codes::NOT_FOUND,
                    format!("{path} is not a file of the image"),
                );
            };
            let size = entry.size;
            let start = match req.headers().get(header::RANGE) {
                None => None,
                Some(value) => match http_paths::parse_range(value.as_bytes()) {
                    Some(start) if start < size || (start == 0 && size == 0) => Some(start),
                    _ => {
                        let mut response = text(
                            StatusCode::RANGE_NOT_SATISFIABLE,
                            codes::BAD_RANGE,
                            format!("range not satisfiable: {path} has {size} bytes"),
                        );
                        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                            response.headers_mut().insert(header::CONTENT_RANGE, v);
                        }
                        return response;
                    }
                },
            };
            let file_path = match image.file_path(path) {
                Ok(p) => p,
                Err(e) => return text(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, e.to_string()),
            };
            let offset = start.unwrap_or(0);
            let file = match open_at(&file_path, size, offset) {
                Ok(file) => file,
                Err(e) => {
                    warn!(namespace, request, file = %path, error = %e, "cannot serve file");
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        codes::SOURCE_ERROR,
                        format!("cannot read {path} at the source: {e}"),
                    );
                }
            };
            let remaining = size - offset;
            let body = if req.method() == Method::HEAD {
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed()
            } else {
                FileBody::spawn(file, remaining, shared.stats.clone()).boxed()
            };
            let mut response = Response::new(body);
            let headers = response.headers_mut();
            if let Some(start) = start {
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "bytes {start}-{}/{size}",
                    size.saturating_sub(1)
                )) {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            } else {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
            }
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(remaining));
            response
        }
    }
}

/// Opens a file of the image and seeks to `offset`; a file whose size differs from its
/// manifest entry is refused rather than served short (the client would retry forever).
fn open_at(path: &std::path::Path, size: u64, offset: u64) -> io::Result<File> {
    let mut file = File::open(path)?;
    let actual = file.metadata()?.len();
    if actual != size {
        return Err(io::Error::other(format!(
            "has {actual} bytes, its manifest says {size}"
        )));
    }
    file.seek(SeekFrom::Start(offset))?;
    Ok(file)
}

/// A response body fed by a blocking reader thread through a bounded channel.
struct FileBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
    stats: Arc<TransferStats>,
}

impl FileBody {
    fn spawn(mut file: File, len: u64, stats: Arc<TransferStats>) -> Self {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        tokio::task::spawn_blocking(move || {
            let mut left = len;
            while left > 0 {
                let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
                // read_to_end into spare capacity: no zero-fill of each new buffer.
                let mut buf = Vec::with_capacity(want);
                let result = (&mut file)
                    .take(want as u64)
                    .read_to_end(&mut buf)
                    .and_then(|n| {
                        if n == 0 {
                            Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "file shrank while being served",
                            ))
                        } else {
                            Ok(n)
                        }
                    });
                match result {
                    Ok(n) => {
                        left -= n as u64;
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return; // the client went away
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
        FileBody {
            rx,
            remaining: len,
            stats,
        }
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let n = chunk.len() as u64;
                self.remaining = self.remaining.saturating_sub(n);
                self.stats.bytes_served.fetch_add(n, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file reader stopped early",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}
