//! The store's one error type, and the helper that gives an I/O error its context.

use std::io;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A path that could leave the store (absolute, `..`, a symlink, …).
    #[error("refusing path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Images are never overwritten.
    #[error("image {0:?} already exists in the store; images are never overwritten")]
    AlreadyExists(String),
    /// A hostPath that is not one of the agent's stores.
    #[error("hostPath {path} is not an image store of this agent (allowed: {allowed})")]
    NotAStore {
        /// The path as given.
        path: String,
        /// The agent's stores.
        allowed: String,
    },
    /// A directory that is not ferry's: no store marker, and content ferry did not write.
    #[error(
        "{root} is not a ferry image store: it has no .ferry-store marker and holds {found:?}, which ferry did not write; refusing to use it (GC deletes under a store's root): name an empty directory, or one of ferry's"
    )]
    ForeignDirectory {
        /// The directory.
        root: String,
        /// The first foreign entry, relative to it.
        found: String,
    },
    /// An image at the location that another request (or an older agent) published.
    #[error(
        "the image there was made for {found}, not for this request (uid {want}); an image left under a re-used request name is never taken for the new request's: delete it (or its request) first"
    )]
    OtherRequest {
        /// Whose the image is: `request uid …`, or `an unknown request` (no uid recorded).
        found: String,
        /// The task's request UID (`unknown` if the task names none).
        want: String,
    },
    /// Not enough free space to write an image.
    #[error(
        "not enough space in store {root}: {what} needs about {need} bytes, {free} are free; nothing was started"
    )]
    NoSpace {
        /// The store's root.
        root: String,
        /// What needs the space.
        what: String,
        /// Estimated bytes needed.
        need: u64,
        /// Bytes free for the agent.
        free: u64,
    },
    /// No published image at that location.
    #[error("no image {0:?} in the store")]
    NotFound(String),
    /// A file does not match its manifest entry.
    #[error("{path}: {what} mismatch (manifest says {expected}, file has {actual})")]
    Mismatch {
        /// File, relative to the image.
        path: String,
        /// `size` or `sha256`.
        what: &'static str,
        /// From the manifest.
        expected: String,
        /// From the file.
        actual: String,
    },
    /// A manifest that does not parse or has the wrong version.
    #[error("manifest of {location:?}: {reason}")]
    BadManifest {
        /// The image.
        location: String,
        /// Why.
        reason: String,
    },
    /// An I/O error, with what the store was doing.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing, with the path.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Turns an [`io::Error`] into [`StoreError::Io`] with `context` (what was done, to which path).
pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}
