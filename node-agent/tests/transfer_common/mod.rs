//! Shared by the transfer tests: stores with published images, a source agent's transfer
//! server on loopback (real sockets, real mutual TLS), the pulling agent's identity, raw
//! requests and captured logs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ferry_agent::store::{Image, ImageKind, ImageMeta, ImageSource, Store, Stores};
use ferry_agent::transfer::{
    Grant, GrantSource, NodeIdentity, PullReport, PullSpec, ServerLimits, ServerTransport,
    StaticGrants, Token, TransferServer, pinned_client_config, pull,
};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const MIB: u64 = 1 << 20;
pub const NS: &str = "team-a";
pub const REQUEST: &str = "migrate-1";
pub const SOURCE_LOCATION: &str = "team-a/migrate-1";
pub const TARGET_LOCATION: &str = "team-a/migrate-1-in";
/// The UID of the request the source's image was made for (recorded in its manifest).
pub const REQUEST_UID: &str = "0b5e55ed-0000-4000-8000-000000000001";

/// A directory for stores: /dev/shm when it has room for `bytes` with margin (fast, and the
/// tests measure the transfer rather than the disk), else the system temp dir.
pub fn scratch(bytes: u64) -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let free = |p: &Path| {
        rustix::fs::statvfs(p)
            .map(|s| s.f_bavail * s.f_frsize)
            .unwrap_or(0)
    };
    let dir = if shm.is_dir() && free(shm) > bytes + 4096 * MIB {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    assert!(
        free(&dir) > bytes + 512 * MIB,
        "{} has too little space for a {bytes}-byte test",
        dir.display()
    );
    tempfile::tempdir_in(dir).unwrap()
}

/// Writes `size` pseudo-random bytes: one xorshift MiB per file, each copy stamped with its
/// index, so no two MiB are alike and the (debug-built) test spends its time transferring.
pub fn write_data(path: &Path, size: u64, seed: u64) {
    let mut file = fs::File::create(path).unwrap();
    let mut state = seed | 1;
    let mut block = vec![0u8; MIB as usize];
    for word in block.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
    let mut left = size;
    let mut index = 0u64;
    while left > 0 {
        block[..8].copy_from_slice(&index.to_le_bytes());
        let n = left.min(MIB) as usize;
        file.write_all(&block[..n]).unwrap();
        left -= n as u64;
        index += 1;
    }
}

/// Scratch space for `bytes` with a source and a target store in it.
pub fn stores(bytes: u64) -> (tempfile::TempDir, Store, Store) {
    let tmp = scratch(bytes);
    let source = Store::open(tmp.path().join("source")).unwrap();
    let target = Store::open(tmp.path().join("target")).unwrap();
    (tmp, source, target)
}

pub fn publish(store: &Store, location: &str, files: &[(&str, u64)]) -> Image {
    publish_for(store, location, files, REQUEST_UID)
}

/// [`publish`] with the image made for the request with UID `request_uid`.
pub fn publish_for(
    store: &Store,
    location: &str,
    files: &[(&str, u64)],
    request_uid: &str,
) -> Image {
    let staging = store.stage(location).unwrap();
    for (i, (name, size)) in files.iter().enumerate() {
        write_data(
            &staging.file_path(name).unwrap(),
            *size,
            0x9e37_79b9 + i as u64,
        );
    }
    let mut meta = ImageMeta::new(
        ImageKind::Criu,
        ImageSource {
            node: "node-a".into(),
            namespace: NS.into(),
            pod: "trainer-0".into(),
            containers: vec!["main".into()],
        },
    );
    meta.request_uid = Some(request_uid.into());
    let manifest = staging.build_manifest(meta).unwrap();
    staging.publish(&manifest).unwrap()
}

/// A source agent's transfer server with one grant (for [`NS`]/[`REQUEST`], pinned to the
/// target's certificate), and the pulling (target) agent's identity.
pub struct Source {
    pub server: TransferServer,
    pub fingerprint: String,
    pub token: Token,
    pub grants: StaticGrants,
    /// The pulling agent's certificate, the one the grant is for.
    pub target: NodeIdentity,
    /// The digest the target expects: the published image's, if the main store has it.
    pub digest: String,
}

/// The grant the operator would mint for [`NS`]/[`REQUEST`], for `client`'s certificate.
pub fn grant_for(token: &Token, client: &NodeIdentity) -> Grant {
    Grant::new(
        token.clone(),
        Timestamp::now() + SignedDuration::from_mins(10),
        NS,
        REQUEST,
        REQUEST_UID,
        Some(client.fingerprint()),
    )
}

impl Source {
    pub async fn start(store: impl Into<Stores>) -> Source {
        let grants = StaticGrants::new();
        Self::start_with(
            store,
            Arc::new(grants.clone()),
            grants,
            ServerLimits::default(),
        )
        .await
    }

    /// A source whose server looks grants up through `lookups` (which should answer from
    /// `grants`), with `limits`.
    pub async fn start_with(
        store: impl Into<Stores>,
        lookups: Arc<dyn GrantSource>,
        grants: StaticGrants,
        limits: ServerLimits,
    ) -> Source {
        let stores: Stores = store.into();
        let digest = stores
            .main()
            .open_image(SOURCE_LOCATION)
            .map(|i| i.digest)
            .unwrap_or_default();
        let identity = NodeIdentity::generate().unwrap();
        let target = NodeIdentity::generate().unwrap();
        let token = Token::generate().unwrap();
        grants.insert(NS, REQUEST, grant_for(&token, &target));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = TransferServer::spawn_with_limits(
            listener,
            stores,
            lookups,
            ServerTransport::Tls(identity.server_config().unwrap()),
            limits,
        )
        .unwrap();
        Source {
            server,
            fingerprint: identity.fingerprint().to_string(),
            token,
            grants,
            target,
            digest,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("https://{}", self.server.local_addr())
    }

    pub fn spec(&self) -> PullSpec {
        PullSpec {
            endpoint: self.endpoint(),
            cert_sha256: self.fingerprint.clone(),
            token: self.token.clone(),
            namespace: NS.into(),
            request: REQUEST.into(),
            location: TARGET_LOCATION.into(),
            expected_digest: self.digest.clone(),
        }
    }

    /// Pulls `spec` as the target agent (its certificate, the one the grant pins).
    pub async fn pull(
        &self,
        spec: &PullSpec,
        store: &Store,
    ) -> Result<PullReport, ferry_agent::transfer::TransferError> {
        pull(spec, &self.target, store, |_, _| {}).await
    }
}

/// Counts the lookups that reach a grant source (each would be an API read).
pub struct CountingGrants(pub StaticGrants, pub Arc<AtomicUsize>);

impl GrantSource for CountingGrants {
    fn grant<'a>(
        &'a self,
        namespace: &'a str,
        request: &'a str,
    ) -> futures::future::BoxFuture<
        'a,
        Result<Option<Grant>, ferry_agent::transfer::GrantLookupError>,
    > {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.grant(namespace, request)
    }
}

/// The source image is exactly as published: every file re-hashed against its manifest.
pub fn assert_intact(source: &Store) {
    source
        .open_image(SOURCE_LOCATION)
        .unwrap()
        .verify()
        .unwrap();
}

pub async fn pull_ok(source: &Source, spec: &PullSpec, store: &Store) -> PullReport {
    source.pull(spec, store).await.unwrap()
}

/// A TCP proxy in front of the source that cuts each of its first `cuts.len()` connections
/// after forwarding `cuts[i]` bytes from the source to the client.
pub async fn cutting_proxy(
    upstream: std::net::SocketAddr,
    cuts: Vec<u64>,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut_count = Arc::new(AtomicUsize::new(0));
    let counted = cut_count.clone();
    tokio::spawn(async move {
        let mut index = 0usize;
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let limit = cuts.get(index).copied();
            index += 1;
            let counted = counted.clone();
            tokio::spawn(async move {
                let server = TcpStream::connect(upstream).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = async {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                };
                let down = async {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut forwarded = 0u64;
                    loop {
                        let want = match limit {
                            Some(limit) if forwarded >= limit => {
                                counted.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Some(limit) => buf.len().min((limit - forwarded) as usize),
                            None => buf.len(),
                        };
                        let n = match server_read.read(&mut buf[..want]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        forwarded += n as u64;
                    }
                };
                // Whichever direction ends first ends the connection: both halves drop.
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    (format!("https://{addr}"), cut_count)
}

/// One raw GET over pinned TLS as the target agent, the path sent exactly as given.
pub async fn raw_get(
    source: &Source,
    path: &str,
    token: Option<&str>,
    range: Option<&str>,
) -> (u16, String, Bytes) {
    raw_get_as(source, &source.target, path, token, range).await
}

/// [`raw_get`] presenting `client`'s certificate.
pub async fn raw_get_as(
    source: &Source,
    client: &NodeIdentity,
    path: &str,
    token: Option<&str>,
    range: Option<&str>,
) -> (u16, String, Bytes) {
    let tcp = TcpStream::connect(source.server.local_addr())
        .await
        .unwrap();
    let config = pinned_client_config(&source.fingerprint, client).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = Request::get(path).header("host", "source");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(range) = range {
        request = request.header("range", range);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let code = response
        .headers()
        .get("x-ferry-error")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, code, body)
}

/// Every log line of this test binary (all levels) goes here.
pub fn captured_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: Arc<std::sync::Mutex<Vec<u8>>> = Arc::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
    .clone()
}

pub struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
