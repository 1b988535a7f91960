//! The transfer layer's one error type: what failed, with the short reason code the NodeTask
//! status shows.

use std::io;

use crate::store::StoreError;

/// What went wrong in a transfer; [`TransferError::reason`] is the short code the NodeTask
/// status shows, the `Display` text its message.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The source refused the token (missing, unknown or wrong).
    #[error("the source refused the transfer token: {0}")]
    Unauthorized(String),
    /// The token is past its expiry.
    #[error("the transfer token has expired: {0}")]
    Expired(String),
    /// The token is valid but does not authorize this image.
    #[error("the source forbids this transfer: {0}")]
    Forbidden(String),
    /// The source has no such image or file.
    #[error("not found at the source: {0}")]
    NotFound(String),
    /// Any other refusal from the source.
    #[error("the source answered HTTP {status}: {reason}")]
    Http {
        /// HTTP status.
        status: u16,
        /// The source's one-line reason.
        reason: String,
    },
    /// A received file does not match the manifest; it was deleted and nothing published.
    #[error(
        "{file}: {what} mismatch (manifest says {expected}, received {actual}); the file was deleted and nothing was published"
    )]
    DigestMismatch {
        /// File, relative to the image.
        file: String,
        /// `sha256` or `size`.
        what: &'static str,
        /// From the manifest.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// The manifest's digest is not the one announced or expected.
    #[error("image digest mismatch: {context} (expected {expected}, got {actual})")]
    ImageDigestMismatch {
        /// Which check.
        context: &'static str,
        /// Expected digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// The target's filesystem is full (or would be).
    #[error("no space left on {fs}: {detail}")]
    NoSpace {
        /// Mount point of the filesystem.
        fs: String,
        /// What needed the space.
        detail: String,
    },
    /// The image is already in the target store with another digest.
    #[error(
        "image {location:?} already exists at the target with digest {local}, the source's is {remote}"
    )]
    Conflict {
        /// Store location.
        location: String,
        /// Digest of the image already there.
        local: String,
        /// Digest of the source's image.
        remote: String,
    },
    /// Connecting or talking to the source failed (after retries, where they apply).
    #[error("connection to {endpoint}: {detail}")]
    Connection {
        /// The source's endpoint.
        endpoint: String,
        /// What failed.
        detail: String,
    },
    /// The TLS handshake failed (e.g. the certificate is not the pinned one).
    #[error("TLS with {endpoint}: {detail}")]
    Tls {
        /// The source's endpoint.
        endpoint: String,
        /// What failed.
        detail: String,
    },
    /// The source sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A bad argument (endpoint, fingerprint, names).
    #[error("invalid transfer request: {0}")]
    Invalid(String),
    /// The image store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Local I/O, with what the transfer was doing.
    #[error("{context}: {source}")]
    Io {
        /// What, with the path.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl TransferError {
    /// A short CamelCase code for the NodeTask status' `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            TransferError::Unauthorized(_) => "TransferUnauthorized",
            TransferError::Expired(_) => "TransferTokenExpired",
            TransferError::Forbidden(_) => "TransferForbidden",
            TransferError::NotFound(_) => "TransferImageNotFound",
            TransferError::Http { .. } => "TransferRefused",
            TransferError::DigestMismatch { .. } => "TransferDigestMismatch",
            TransferError::ImageDigestMismatch { .. } => "TransferDigestMismatch",
            TransferError::NoSpace { .. } => "TransferNoSpace",
            TransferError::Conflict { .. } => "TransferImageConflict",
            TransferError::Connection { .. } => "TransferConnectionFailed",
            TransferError::Tls { .. } => "TransferTlsFailed",
            TransferError::Protocol(_) => "TransferProtocolError",
            TransferError::Invalid(_) => "TransferInvalid",
            TransferError::Store(_) => "TransferStoreError",
            TransferError::Io { .. } => "TransferIoError",
        }
    }

    /// Whether a later attempt may succeed without anyone changing anything (the task may
    /// retry; the partial image is kept for it).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransferError::Connection { .. } | TransferError::Http { status: 500.., .. }
        )
    }
}

/// Result of transfer operations.
pub type Result<T, E = TransferError> = std::result::Result<T, E>;

/// Turns an [`io::Error`] into [`TransferError::Io`] with `context`.
pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> TransferError {
    let context = context.into();
    move |source| TransferError::Io { context, source }
}
