//! What a pull is asked to do ([`PullSpec`]), how it talks to the source
//! ([`ClientTransport`]) and what it reports ([`PullReport`]).

use std::sync::Arc;

use rustls::ClientConfig;

use crate::transfer::error::{Result, TransferError};
use crate::transfer::http_paths;
use crate::transfer::token::Token;

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
    /// The image digest (hex SHA-256 of its manifest) the operator expects. Required: a pull
    /// with no digest, or one that is not 64 hex digits, is refused before anything is sent
    /// (fail closed: the digest is what pins the image to the checkpoint the operator saw).
    pub expected_digest: String,
}

impl PullSpec {
    /// The expected digest must be a SHA-256 in hex; nothing else pins the image.
    pub(super) fn check_digest(&self) -> Result<()> {
        let d = self.expected_digest.as_str();
        pinned_digest((!d.is_empty()).then_some(d)).map(|_| ())
    }

    /// The namespace and request name go into URLs: they must be what Kubernetes allows.
    pub(super) fn check_names(&self) -> Result<()> {
        if !http_paths::is_dns1123_label(&self.namespace) {
            return Err(TransferError::Invalid(format!(
                "namespace {:?} is not a DNS-1123 label",
                self.namespace
            )));
        }
        if !http_paths::is_dns1123_subdomain(&self.request) {
            return Err(TransferError::Invalid(format!(
                "request {:?} is not a DNS-1123 subdomain",
                self.request
            )));
        }
        Ok(())
    }
}

/// How the client talks to the source.
#[derive(Clone)]
pub enum ClientTransport {
    /// TLS with a pinned certificate ([`crate::transfer::pinned_client_config`]).
    Tls(Arc<ClientConfig>),
    /// Plain TCP: only for the benchmark's raw baseline.
    Plain,
}

/// What a pull did.
#[derive(Clone, Debug, Default, PartialEq)]
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

/// A task's image digest, lower-cased, if it is a hex SHA-256; a missing or malformed one is
/// refused (fail closed: the digest is what pins an image, pulled or local, to the checkpoint
/// the operator saw).
pub fn pinned_digest(digest: Option<&str>) -> Result<String> {
    match digest {
        Some(d) if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(d.to_ascii_lowercase())
        }
        Some(d) => Err(TransferError::Invalid(format!(
            "the task's image digest {d:?} is not a hex SHA-256; refusing to pull"
        ))),
        None => Err(TransferError::Invalid(
            "the task names no image digest; refusing to pull or use an image nothing pins"
                .to_string(),
        )),
    }
}
