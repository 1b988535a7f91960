//! The target side: [`pull`] fetches an image from a source agent into the local store.
//!
//! The image is received into `<location>.partial` and published only after every file's size
//! and SHA-256 match the manifest, so a restore can never see a corrupt or half image. A
//! broken connection resumes from the current offset with a `Range` request; a pull that
//! fails (full disk, source gone) keeps the partial, and the next pull of the same location
//! hashes what is there and continues from it.
//!
//! Memory is bounded: received data is gathered into [`WRITE_CHUNK`]-sized buffers (TLS
//! hands it over a record, ~16 KiB, at a time; one write and one thread wake-up per MiB
//! instead) that go through a channel of [`CHUNKS_IN_FLIGHT`] slots to a blocking writer
//! thread, which also hashes, so decryption and hashing+writing run on two cores.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

use super::http_paths::{self, DIGEST_HEADER, ERROR_HEADER, codes};
use super::tls::pinned_client_config;
use super::token::Token;
use super::{Result, TransferError, io_err};
use crate::store::{FileEntry, Manifest, Staging, Store, hex, sha256_hex};

/// Buffers queued for the writer.
pub const CHUNKS_IN_FLIGHT: usize = 8;
/// Bytes gathered before a buffer goes to the writer.
pub const WRITE_CHUNK: usize = 1 << 20;
/// Socket read buffer under TLS (see [`Puller::connect`]).
const TLS_READ_BUFFER: usize = 256 << 10;
/// Attempts in a row without progress before a file (or the manifest) gives up.
pub const MAX_ATTEMPTS: u32 = 5;
/// First retry delay; doubled per failed attempt in a row.
const BACKOFF: Duration = Duration::from_millis(200);
/// Connect (TCP + TLS) timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while a response streams before the connection counts as broken.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest manifest accepted (a manifest lists files, it is small).
const MAX_MANIFEST: usize = 64 << 20;
/// Largest error body read.
const MAX_ERROR_BODY: usize = 4096;
/// Read size when hashing a partial file's prefix.
const HASH_BUFFER: usize = 1 << 20;

/// What to pull and where to put it.
#[derive(Clone, Debug)]
pub struct PullSpec {
    /// The source agent, `https://<ip>:<port>`.
    pub endpoint: String,
    /// Hex SHA-256 of the source agent's certificate (its Lease annotation).
    pub cert_sha256: String,
    /// The transfer token.
    pub token: Token,
    /// Namespace of the CheckpointRequest.
    pub namespace: String,
    /// The CheckpointRequest's name.
    pub request: String,
    /// Where to publish the image in the local store.
    pub location: String,
    /// The image digest the operator expects, if it knows it.
    pub expected_digest: Option<String>,
}

/// How the client talks to the source.
#[derive(Clone)]
pub enum ClientTransport {
    /// TLS with a pinned certificate ([`pinned_client_config`]).
    Tls(Arc<ClientConfig>),
    /// Plain TCP: only for the benchmark's raw baseline.
    Plain,
}

/// What a pull did.
#[derive(Clone, Debug, PartialEq)]
pub struct PullReport {
    /// Bytes received over the network (file contents).
    pub bytes_transferred: u64,
    /// Bytes not re-sent because they were already on disk when a `Range` request resumed
    /// (from an earlier pull's partial or after a broken connection in this one).
    pub bytes_resumed: u64,
    /// Requests that resumed a file after a broken connection in this pull.
    pub resumes: u32,
    /// Wall-clock seconds of the pull.
    pub seconds: f64,
    /// `bytes_transferred / seconds`.
    pub bytes_per_second: f64,
    /// The image's digest (SHA-256 of its manifest).
    pub digest: String,
    /// Files in the image.
    pub files: usize,
    /// Bytes in the image.
    pub total_bytes: u64,
    /// The image was already published with this digest; nothing was transferred.
    pub already_present: bool,
}

/// Pulls `spec`'s image from its source over TLS pinned to `spec.cert_sha256` into `store`,
/// calling `progress(done_bytes, total_bytes)` as data lands.
pub async fn pull(
    spec: &PullSpec,
    store: &Store,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<PullReport> {
    let config = pinned_client_config(&spec.cert_sha256)?;
    pull_with_transport(spec, store, ClientTransport::Tls(config), progress).await
}

/// [`pull`] over a given transport (the benchmark compares TLS with plain TCP).
pub async fn pull_with_transport(
    spec: &PullSpec,
    store: &Store,
    transport: ClientTransport,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<PullReport> {
    let span = tracing::info_span!(
        "pull",
        endpoint = %spec.endpoint,
        namespace = %spec.namespace,
        request = %spec.request,
        location = %spec.location,
    );
    Puller::new(spec, transport)?
        .run(store, progress)
        .instrument(span)
        .await
}

struct Puller<'a> {
    spec: &'a PullSpec,
    transport: ClientTransport,
    host: String,
    port: u16,
    authority: HeaderValue,
    server_name: ServerName<'static>,
    authorization: HeaderValue,
    sender: Option<SendRequest<Empty<Bytes>>>,
    report: PullReport,
}

impl<'a> Puller<'a> {
    fn new(spec: &'a PullSpec, transport: ClientTransport) -> Result<Self> {
        let invalid =
            |why: &str| TransferError::Invalid(format!("endpoint {:?}: {why}", spec.endpoint));
        let uri: Uri = spec
            .endpoint
            .parse()
            .map_err(|e| invalid(&format!("{e}")))?;
        let (want_scheme, default_port) = match transport {
            ClientTransport::Tls(_) => ("https", 443),
            ClientTransport::Plain => ("http", 80),
        };
        if uri.scheme_str() != Some(want_scheme) {
            return Err(invalid(&format!("the scheme must be {want_scheme}")));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("must be scheme://host:port only"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(default_port);
        // Agents are reached by IP: an IP server name sends no SNI, and the pinned verifier
        // ignores names anyway.
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| invalid(&format!("host: {e}")))?;
        let authority =
            HeaderValue::from_str(authority.as_str()).map_err(|e| invalid(&format!("{e}")))?;
        if !http_paths::is_dns1123_label(&spec.namespace) {
            return Err(TransferError::Invalid(format!(
                "namespace {:?} is not a DNS-1123 label",
                spec.namespace
            )));
        }
        if !http_paths::is_dns1123_subdomain(&spec.request) {
            return Err(TransferError::Invalid(format!(
                "request {:?} is not a DNS-1123 subdomain",
                spec.request
            )));
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", spec.token.expose_secret())).map_err(
                |_| TransferError::Invalid("the token is not a valid header value".into()),
            )?;
        // Keeps the value out of hyper's debug output and HPACK-style caches.
        authorization.set_sensitive(true);
        Ok(Puller {
            spec,
            transport,
            host,
            port,
            authority,
            server_name,
            authorization,
            sender: None,
            report: PullReport {
                bytes_transferred: 0,
                bytes_resumed: 0,
                resumes: 0,
                seconds: 0.0,
                bytes_per_second: 0.0,
                digest: String::new(),
                files: 0,
                total_bytes: 0,
                already_present: false,
            },
        })
    }

    fn conn_err(&self, detail: impl std::fmt::Display) -> TransferError {
        TransferError::Connection {
            endpoint: self.spec.endpoint.clone(),
            detail: detail.to_string(),
        }
    }

    async fn run(
        mut self,
        store: &Store,
        mut progress: impl FnMut(u64, u64) + Send,
    ) -> Result<PullReport> {
        let started = Instant::now();
        let location = self.spec.location.as_str();
        let (manifest, manifest_bytes, digest) = self.fetch_manifest().await?;
        self.report.digest = digest.clone();
        self.report.files = manifest.files.len();
        self.report.total_bytes = manifest.total_bytes();

        if store.exists(location)? {
            let local = store.open_image(location)?;
            if local.digest == digest {
                info!(digest = %digest, "image already present");
                self.report.already_present = true;
                return Ok(self.report);
            }
            return Err(TransferError::Conflict {
                location: location.to_string(),
                local: local.digest,
                remote: digest,
            });
        }

        let staging = store.resume(location)?;
        check_free_space(&staging, &manifest)?;
        let total = manifest.total_bytes();
        let mut done = 0u64;
        info!(
            digest = %digest,
            files = manifest.files.len(),
            bytes = total,
            "pulling image"
        );
        for entry in &manifest.files {
            self.fetch_file(&staging, entry, &mut done, total, &mut progress)
                .await?;
        }
        let image = staging.publish_bytes(&manifest, manifest_bytes)?;
        if image.digest != digest {
            // Cannot happen (the bytes are the source's); checked because a restore trusts it.
            return Err(TransferError::ImageDigestMismatch {
                context: "published image",
                expected: digest,
                actual: image.digest,
            });
        }
        let seconds = started.elapsed().as_secs_f64();
        self.report.seconds = seconds;
        self.report.bytes_per_second = if seconds > 0.0 {
            self.report.bytes_transferred as f64 / seconds
        } else {
            0.0
        };
        info!(
            digest = %digest,
            bytes_transferred = self.report.bytes_transferred,
            bytes_resumed = self.report.bytes_resumed,
            resumes = self.report.resumes,
            seconds,
            bytes_per_second = self.report.bytes_per_second,
            "image pulled and verified"
        );
        Ok(self.report)
    }

    async fn connect(&mut self) -> Result<()> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
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
                    connector.connect(self.server_name.clone(), tcp),
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
                            endpoint: self.spec.endpoint.clone(),
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
    async fn get(&mut self, path: &str, range: Option<u64>) -> Result<Response<Incoming>> {
        let reusable = match self.sender.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.sender = None;
            self.connect().await?;
        }
        let mut request = Request::get(path)
            .header(header::HOST, self.authority.clone())
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
        Err(self.status_error(path, response).await)
    }

    async fn status_error(&mut self, path: &str, response: Response<Incoming>) -> TransferError {
        let status = response.status();
        let code = response
            .headers()
            .get(ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = match Limited::new(response.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                // The rest of the body was not read: the connection cannot be reused.
                self.sender = None;
                Bytes::new()
            }
        };
        let reason = String::from_utf8_lossy(&body)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let reason = if reason.is_empty() {
            format!("GET {path}: {status}")
        } else {
            reason
        };
        match (status, code.as_str()) {
            (StatusCode::UNAUTHORIZED, _) => TransferError::Unauthorized(reason),
            (StatusCode::FORBIDDEN, codes::EXPIRED) => TransferError::Expired(reason),
            (StatusCode::FORBIDDEN, _) => TransferError::Forbidden(reason),
            (StatusCode::NOT_FOUND, _) => TransferError::NotFound(reason),
            _ => TransferError::Http {
                status: status.as_u16(),
                reason,
            },
        }
    }

    /// Waits before the next attempt, or gives up with `err` after [`MAX_ATTEMPTS`] in a row.
    async fn backoff(&mut self, failures: u32, err: TransferError) -> Result<()> {
        if !err.is_transient() || failures >= MAX_ATTEMPTS {
            return Err(err);
        }
        self.sender = None;
        let delay = BACKOFF * 2u32.saturating_pow(failures.saturating_sub(1));
        warn!(error = %err, attempt = failures, delay_ms = delay.as_millis() as u64, "transfer attempt failed; retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    async fn fetch_manifest(&mut self) -> Result<(Manifest, Vec<u8>, String)> {
        let path = http_paths::manifest_path(&self.spec.namespace, &self.spec.request);
        let mut failures = 0;
        let (announced, bytes) = loop {
            let attempt = async {
                let response = self.get(&path, None).await?;
                let announced = response
                    .headers()
                    .get(DIGEST_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        TransferError::Protocol(format!(
                            "the manifest came without {DIGEST_HEADER}"
                        ))
                    })?;
                let body = tokio::time::timeout(
                    IDLE_TIMEOUT,
                    Limited::new(response.into_body(), MAX_MANIFEST).collect(),
                )
                .await
                .map_err(|_| self.conn_err("manifest: timed out"))?
                .map_err(|e| self.conn_err(format!("manifest: {e}")))?;
                Ok::<_, TransferError>((announced, body.to_bytes().to_vec()))
            };
            match attempt.await {
                Ok(ok) => break ok,
                Err(e) => {
                    failures += 1;
                    self.backoff(failures, e).await?;
                }
            }
        };
        let digest = sha256_hex(&bytes);
        if announced != digest {
            return Err(TransferError::ImageDigestMismatch {
                context: "manifest received",
                expected: announced,
                actual: digest,
            });
        }
        if let Some(expected) = &self.spec.expected_digest
            && !expected.eq_ignore_ascii_case(&digest)
        {
            return Err(TransferError::ImageDigestMismatch {
                context: "the source's image is not the one expected",
                expected: expected.clone(),
                actual: digest,
            });
        }
        // Every path in a remote manifest is validated before anything is written.
        let manifest = Manifest::from_bytes(&self.spec.location, &bytes)?;
        Ok((manifest, bytes, digest))
    }

    async fn fetch_file(
        &mut self,
        staging: &Staging,
        entry: &FileEntry,
        done: &mut u64,
        total: u64,
        progress: &mut (impl FnMut(u64, u64) + Send),
    ) -> Result<()> {
        let path = staging.file_path(&entry.path)?;
        let prefix = {
            let path = path.clone();
            let entry = entry.clone();
            tokio::task::spawn_blocking(move || existing_prefix(&path, &entry))
                .await
                .map_err(|e| TransferError::Protocol(format!("prefix hasher panicked: {e}")))??
        };
        let (mut offset, hasher) = match prefix {
            Prefix::Complete => {
                debug!(file = %entry.path, "already received");
                self.report.bytes_resumed += entry.size;
                *done += entry.size;
                progress(*done, total);
                return Ok(());
            }
            Prefix::Partial { len, hasher } => (len, hasher),
        };
        if offset > 0 {
            debug!(file = %entry.path, offset, "resuming a partial file");
            self.report.bytes_resumed += offset;
        }
        *done += offset;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(format!("open {}", path.display())))?;
        let (tx, writer) = spawn_writer(file, hasher);
        let mut sink = Sink {
            tx,
            pending: BytesMut::new(),
        };
        let url = http_paths::file_path(&self.spec.namespace, &self.spec.request, &entry.path);
        let mut failures = 0u32;
        let mut first = true;
        let stream_result: Result<()> = loop {
            if offset == entry.size {
                break Ok(()); // complete (an empty file needs no request at all)
            }
            let range = (offset > 0).then_some(offset);
            if !first && offset > 0 {
                self.report.resumes += 1;
                self.report.bytes_resumed += offset;
                info!(file = %entry.path, offset, "resuming after a broken connection");
            }
            first = false;
            let before = offset;
            let streamed = self
                .stream_into(
                    &url,
                    range,
                    entry,
                    &mut sink,
                    &mut offset,
                    done,
                    total,
                    progress,
                )
                .await;
            // What was received counts in `offset`, so it must reach the file before a resume.
            let streamed = match sink.flush().await {
                Ok(()) => streamed,
                Err(WriterGone) => Err(Stream::WriterGone),
            };
            match streamed {
                Ok(()) if offset == entry.size => break Ok(()),
                Ok(()) => {
                    failures = if offset > before { 1 } else { failures + 1 };
                    let err = self.conn_err(format!(
                        "{}: the response ended at byte {offset} of {}",
                        entry.path, entry.size
                    ));
                    if let Err(e) = self.backoff(failures, err).await {
                        break Err(e);
                    }
                }
                Err(Stream::WriterGone) => break Ok(()), // its error comes from the join below
                Err(Stream::Failed(e)) => {
                    failures = if offset > before { 1 } else { failures + 1 };
                    if let Err(e) = self.backoff(failures, e).await {
                        break Err(e);
                    }
                }
            }
        };
        drop(sink);
        let written = writer
            .await
            .map_err(|e| TransferError::Protocol(format!("file writer panicked: {e}")))?;
        let hasher = match written {
            Ok(hasher) => hasher,
            Err(e) if is_no_space(&e) => {
                return Err(TransferError::NoSpace {
                    fs: mount_point(staging.dir()).display().to_string(),
                    detail: format!(
                        "writing {} (the partial file is kept; a later pull resumes it)",
                        entry.path
                    ),
                });
            }
            Err(e) => return Err(io_err(format!("write {}", path.display()))(e)),
        };
        stream_result?;
        let size = fs::metadata(&path)
            .map_err(io_err(format!("stat {}", path.display())))?
            .len();
        let sha256 = hex(&hasher.finalize());
        let mismatch = if size != entry.size {
            Some(("size", entry.size.to_string(), size.to_string()))
        } else if sha256 != entry.sha256 {
            Some(("sha256", entry.sha256.clone(), sha256))
        } else {
            None
        };
        if let Some((what, expected, actual)) = mismatch {
            // A corrupt file must not be resumed from either: delete it.
            let _ = fs::remove_file(&path);
            warn!(file = %entry.path, what, "received file does not match the manifest; deleted");
            return Err(TransferError::DigestMismatch {
                file: entry.path.clone(),
                what,
                expected,
                actual,
            });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_into(
        &mut self,
        url: &str,
        range: Option<u64>,
        entry: &FileEntry,
        sink: &mut Sink,
        offset: &mut u64,
        done: &mut u64,
        total: u64,
        progress: &mut (impl FnMut(u64, u64) + Send),
    ) -> std::result::Result<(), Stream> {
        let response = self.get(url, range).await.map_err(Stream::Failed)?;
        check_range(&response, range, entry).map_err(Stream::Failed)?;
        let mut body = response.into_body();
        loop {
            let frame = match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
                Err(_) => {
                    return Err(Stream::Failed(
                        self.conn_err(format!("{}: no data for {IDLE_TIMEOUT:?}", entry.path)),
                    ));
                }
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => {
                    return Err(Stream::Failed(
                        self.conn_err(format!("{} at byte {offset}: {e}", entry.path)),
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers: none are sent
            };
            let len = data.len() as u64;
            if *offset + len > entry.size {
                return Err(Stream::Failed(TransferError::Protocol(format!(
                    "{}: the source sent more than the manifest's {} bytes",
                    entry.path, entry.size
                ))));
            }
            if sink.push(data).await.is_err() {
                return Err(Stream::WriterGone);
            }
            *offset += len;
            *done += len;
            self.report.bytes_transferred += len;
            progress(*done, total);
        }
    }
}

/// The writer thread stopped (a write failed); its join result says why.
struct WriterGone;

/// Gathers received data into [`WRITE_CHUNK`]-sized buffers for the writer thread.
struct Sink {
    tx: mpsc::Sender<Bytes>,
    pending: BytesMut,
}

impl Sink {
    async fn push(&mut self, data: Bytes) -> std::result::Result<(), WriterGone> {
        if self.pending.is_empty() && data.len() >= WRITE_CHUNK {
            return self.tx.send(data).await.map_err(|_| WriterGone);
        }
        // Flush first rather than grow: growing would copy the whole buffer again.
        if !self.pending.is_empty() && self.pending.len() + data.len() > self.pending.capacity() {
            self.flush().await?;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve(WRITE_CHUNK.max(data.len()));
        }
        self.pending.extend_from_slice(&data);
        if self.pending.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::result::Result<(), WriterGone> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // split() hands the filled buffer over; the next push allocates a fresh one.
        let full = self.pending.split().freeze();
        self.tx.send(full).await.map_err(|_| WriterGone)
    }
}

enum Stream {
    /// The writer thread stopped (a write failed); its error says why.
    WriterGone,
    Failed(TransferError),
}

/// A 206 must start where asked; a 200 is only acceptable when no range was asked.
fn check_range(response: &Response<Incoming>, range: Option<u64>, entry: &FileEntry) -> Result<()> {
    match (range, response.status()) {
        (None, StatusCode::OK) => Ok(()),
        (Some(start), StatusCode::PARTIAL_CONTENT) => {
            let content_range = response
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if content_range.starts_with(&format!("bytes {start}-")) {
                Ok(())
            } else {
                Err(TransferError::Protocol(format!(
                    "{}: asked for bytes {start}-, got Content-Range {content_range:?}",
                    entry.path
                )))
            }
        }
        (_, status) => Err(TransferError::Protocol(format!(
            "{}: unexpected status {status} for range {range:?}",
            entry.path
        ))),
    }
}

enum Prefix {
    /// The whole file is there and matches.
    Complete,
    /// `len` bytes are there (possibly 0), hashed into `hasher`.
    Partial { len: u64, hasher: Sha256 },
}

/// Hashes what an earlier attempt left of a file. A prefix longer than the file, or a
/// complete file that does not match, is thrown away and fetched again.
fn existing_prefix(path: &Path, entry: &FileEntry) -> Result<Prefix> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Prefix::Partial {
                len: 0,
                hasher: Sha256::new(),
            });
        }
        Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
    };
    let len = file
        .metadata()
        .map_err(io_err(format!("stat {}", path.display())))?
        .len();
    let restart = || -> Result<Prefix> {
        fs::remove_file(path).map_err(io_err(format!("remove {}", path.display())))?;
        Ok(Prefix::Partial {
            len: 0,
            hasher: Sha256::new(),
        })
    };
    if len > entry.size {
        warn!(file = %entry.path, len, size = entry.size, "partial file is longer than the manifest says; fetching it again");
        return restart();
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut hashed = 0u64;
    while hashed < len {
        let n = file
            .read(&mut buf)
            .map_err(io_err(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        hashed += n as u64;
    }
    if hashed != len {
        return restart();
    }
    if len == entry.size {
        if hex(&hasher.finalize()) == entry.sha256 {
            return Ok(Prefix::Complete);
        }
        warn!(file = %entry.path, "complete partial file does not match the manifest; fetching it again");
        return restart();
    }
    Ok(Prefix::Partial { len, hasher })
}

/// The writer thread: appends and hashes every chunk; its result is the hasher, or the first
/// write error (what was written before it stays, for a later resume).
fn spawn_writer(
    mut file: File,
    mut hasher: Sha256,
) -> (
    mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<io::Result<Sha256>>,
) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let handle = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk)?;
            hasher.update(&chunk);
        }
        Ok(hasher)
    });
    (tx, handle)
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}

/// Fails fast when the image cannot fit, before a byte is written.
fn check_free_space(staging: &Staging, manifest: &Manifest) -> Result<()> {
    let mut needed = 0u64;
    for entry in &manifest.files {
        let have = staging
            .file_path(&entry.path)
            .ok()
            .and_then(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .filter(|&len| len <= entry.size)
            .unwrap_or(0);
        needed += entry.size - have;
    }
    let stat = rustix::fs::statvfs(staging.dir())
        .map_err(|e| io_err(format!("statvfs {}", staging.dir().display()))(io::Error::from(e)))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if needed > free {
        return Err(TransferError::NoSpace {
            fs: mount_point(staging.dir()).display().to_string(),
            detail: format!("the image needs {needed} more bytes, {free} are free"),
        });
    }
    Ok(())
}

/// The mount point of the filesystem holding `path` (for error messages).
fn mount_point(path: &Path) -> PathBuf {
    let Ok(dev) = fs::metadata(path).map(|m| m.dev()) else {
        return path.to_path_buf();
    };
    let mut current = path;
    while let Some(parent) = current.parent() {
        match fs::metadata(parent) {
            Ok(m) if m.dev() == dev => current = parent,
            _ => break,
        }
    }
    current.to_path_buf()
}
