//! The target side: [`pull`] fetches an image from a source agent into the local store.
//!
//! The image is received into `<location>.partial` and published only after every file's size
//! and SHA-256 match the manifest, so a restore can never see a corrupt or half image. A
//! broken connection resumes from the current offset with a `Range` request; a pull that
//! fails (full disk, source gone) keeps the partial, and the next pull of the same location
//! hashes what is there and continues from it.
//!
//! Memory is bounded: received data is gathered into [`WRITE_CHUNK`]-sized buffers that go
//! through a channel of [`CHUNKS_IN_FLIGHT`] slots to a blocking writer thread, which also
//! hashes, so decryption and hashing+writing run on two cores.
//!
//! One concern per module, each importing only those listed before it:
//! - `spec`: [`PullSpec`], [`ClientTransport`], [`PullReport`].
//! - `progress`: a running pull's tally and progress callback.
//! - `endpoint`: the source's `scheme://host:port`.
//! - `http`: what the source's HTTP answers mean.
//! - `connection`: TCP, TLS and HTTP/1.1 to the source, reconnecting.
//! - `retry`: backoff over transient failures ([`MAX_ATTEMPTS`]).
//! - `resume`: what an earlier attempt left of a file.
//! - `writer`: the bounded, hashing file writer.
//! - `space`: free-space checks.
//! - `manifest`: fetching and checking the manifest.
//! - `file`: fetching one file.

mod connection;
mod endpoint;
mod file;
mod http;
mod manifest;
mod progress;
mod resume;
mod retry;
mod space;
mod spec;
mod writer;

use std::time::Instant;

use tracing::{Instrument, info};

use self::connection::Connection;
use self::progress::Tally;
use crate::store::Store;
use crate::transfer::error::{Result, TransferError};
use crate::transfer::tls::{NodeIdentity, pinned_client_config};

pub use self::retry::MAX_ATTEMPTS;
pub use self::spec::{ClientTransport, PullReport, PullSpec, pinned_digest};
pub use self::writer::{CHUNKS_IN_FLIGHT, WRITE_CHUNK};

/// Pulls `spec`'s image from its source over TLS pinned to `spec.cert_sha256`, presenting
/// `identity`'s certificate, into `store`, calling `progress(done_bytes, total_bytes)` as
/// data lands.
pub async fn pull(
    spec: &PullSpec,
    identity: &NodeIdentity,
    store: &Store,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<PullReport> {
    let config = pinned_client_config(&spec.cert_sha256, identity)?;
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
    let conn = Connection::new(spec, transport)?;
    run(spec, conn, store, progress).instrument(span).await
}

/// The pull: the manifest, then (unless the image is already here) every file, then publish.
async fn run(
    spec: &PullSpec,
    mut conn: Connection,
    store: &Store,
    progress: impl FnMut(u64, u64) + Send,
) -> Result<PullReport> {
    let started = Instant::now();
    let location = spec.location.as_str();
    let (manifest, manifest_bytes, digest) = manifest::fetch(&mut conn, spec).await?;
    let mut report = PullReport {
        digest: digest.clone(),
        files: manifest.files.len(),
        total_bytes: manifest.total_bytes(),
        ..PullReport::default()
    };

    if store.exists(location)? {
        let local = store.open_image(location)?;
        if local.digest == digest {
            info!(digest = %digest, "image already present");
            report.already_present = true;
            return Ok(report);
        }
        return Err(TransferError::Conflict {
            location: location.to_string(),
            local: local.digest,
            remote: digest,
        });
    }

    let staging = store.resume(location)?;
    space::check_free_space(&staging, &manifest)?;
    let total = manifest.total_bytes();
    let mut tally = Tally {
        report,
        done: 0,
        total,
        progress,
    };
    info!(
        digest = %digest,
        files = manifest.files.len(),
        bytes = total,
        "pulling image"
    );
    for entry in &manifest.files {
        file::fetch(&mut conn, &mut tally, spec, &staging, entry).await?;
    }
    let mut report = tally.report;
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
    report.seconds = seconds;
    report.bytes_per_second = if seconds > 0.0 {
        report.bytes_transferred as f64 / seconds
    } else {
        0.0
    };
    info!(
        digest = %digest,
        bytes_transferred = report.bytes_transferred,
        bytes_resumed = report.bytes_resumed,
        resumes = report.resumes,
        seconds,
        bytes_per_second = report.bytes_per_second,
        "image pulled and verified"
    );
    Ok(report)
}
