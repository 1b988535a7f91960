//! The connection to the source: TCP (+ TLS with the pinned certificate), HTTP/1.1, one
//! request at a time with the bearer token, reconnecting when the last connection broke.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::net::TcpStream;
use tracing::debug;

use super::endpoint::Endpoint;
use super::http::status_error;
use super::spec::{ClientTransport, PullSpec};
use crate::transfer::error::{Result, TransferError};

/// Socket read buffer under TLS (see [`Connection::connect`]).
const TLS_READ_BUFFER: usize = 256 << 10;
/// Connect (TCP + TLS) timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while a response streams before the connection counts as broken.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The client's side of the connection to one source.
pub(super) struct Connection {
    /// The endpoint as given, for errors.
    url: String,
    transport: ClientTransport,
    endpoint: Endpoint,
    authorization: HeaderValue,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Connection {
    /// Checks `spec` (endpoint, names, token) and prepares to connect; nothing is sent yet.
    pub(super) fn new(spec: &PullSpec, transport: ClientTransport) -> Result<Self> {
        let endpoint = Endpoint::parse(&spec.endpoint, &transport)?;
        spec.check_names()?;
        spec.check_digest()?;
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", spec.token.expose_secret())).map_err(
                |_| TransferError::Invalid("the token is not a valid header value".into()),
            )?;
        // Keeps the value out of hyper's debug output and HPACK-style caches.
        authorization.set_sensitive(true);
        Ok(Connection {
            url: spec.endpoint.clone(),
            transport,
            endpoint,
            authorization,
            sender: None,
        })
    }

    /// A [`TransferError::Connection`] with `detail`.
    pub(super) fn conn_err(&self, detail: impl std::fmt::Display) -> TransferError {
        TransferError::Connection {
            endpoint: self.url.clone(),
            detail: detail.to_string(),
        }
    }

    /// Drops the connection: the next request opens a new one.
    pub(super) fn reset(&mut self) {
        self.sender = None;
    }

    async fn connect(&mut self) -> Result<()> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port)),
        )
        .await
        .map_err(|_| self.conn_err("connect timed out"))?
        .map_err(|e| self.conn_err(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let sender = match &self.transport {
            ClientTransport::Tls(config) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                // rustls reads its socket 4 KiB at a time (several read syscalls per 16 KiB
                // record); a buffer below it makes that one syscall per TLS_READ_BUFFER.
                let tcp = tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, tcp);
                let tls = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    connector.connect(self.endpoint.server_name.clone(), tcp),
                )
                .await
                .map_err(|_| self.conn_err("TLS handshake timed out"))?
                .map_err(|e| {
                    // A rustls error (wrong certificate, …) will not go away with a retry.
                    match e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    {
                        Some(tls) => TransferError::Tls {
                            endpoint: self.url.clone(),
                            detail: tls.to_string(),
                        },
                        None => self.conn_err(format!("TLS handshake: {e}")),
                    }
                })?;
                self.http1(tls).await?
            }
            ClientTransport::Plain => self.http1(tcp).await?,
        };
        self.sender = Some(sender);
        Ok(())
    }

    /// HTTP/1.1 over an established stream; the connection is driven by its own task.
    async fn http1<S>(&self, stream: S) -> Result<SendRequest<Empty<Bytes>>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.conn_err(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "transfer connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends a GET, (re)connecting as needed; a non-success status becomes its error.
    pub(super) async fn get(
        &mut self,
        path: &str,
        range: Option<u64>,
    ) -> Result<Response<Incoming>> {
        let reusable = match self.sender.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.sender = None;
            self.connect().await?;
        }
        let mut request = Request::get(path)
            .header(header::HOST, self.endpoint.authority.clone())
            .header(header::AUTHORIZATION, self.authorization.clone());
        if let Some(start) = range {
            request = request.header(header::RANGE, format!("bytes={start}-"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| TransferError::Invalid(format!("request {path}: {e}")))?;
        let Some(sender) = self.sender.as_mut() else {
            return Err(self.conn_err("no connection"));
        };
        let response = match tokio::time::timeout(IDLE_TIMEOUT, sender.send_request(request)).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                self.sender = None;
                return Err(self.conn_err(format!("GET {path}: {e}")));
            }
            Err(_) => {
                self.sender = None;
                return Err(self.conn_err(format!("GET {path}: no response in {IDLE_TIMEOUT:?}")));
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let (error, body_read) = status_error(path, response).await;
        if !body_read {
            // The rest of the body was not read: the connection cannot be reused.
            self.sender = None;
        }
        Err(error)
    }
}
