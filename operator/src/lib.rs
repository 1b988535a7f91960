//! ferry's operator: reconciles `CheckpointRequest`s into NodeTasks for the node agents, a
//! restored pod for migrations, and a status that says where each request is.
//!
//! `main.rs` only wires: logging and the HTTP endpoints (`ferry-service`), leader election
//! ([`leader`]) and the controller ([`controller::run`]).

pub mod agents;
pub mod controller;
pub mod leader;
pub mod metrics;

use std::time::Duration;

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[source] kube::Error),

    /// The finalizer helper failed. NB: boxed because `finalizer::Error` wraps this type.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    /// An object from the API server lacks a field every stored object has.
    #[error("object has no {0}; the API server always sets it, so this is a bug")]
    MissingObjectKey(&'static str),

    /// Deletion waits for the agents to delete the request's images.
    #[error("waiting for the agents to delete the images: {0}")]
    CleanupPending(String),

    /// The operating system gave no random bytes for a transfer token.
    #[error("no random bytes for the transfer token: {0}")]
    Random(String),

    /// A watch's cache did not fill.
    #[error(
        "the {0} cache did not fill; is the API server reachable and the RBAC applied (manifests/rbac/)?"
    )]
    CacheNotReady(&'static str),
}

impl Error {
    /// The `error` label of `ferry_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::MissingObjectKey(_) => "missing_object_key",
            Error::CleanupPending(_) => "cleanup_pending",
            Error::Random(_) => "random",
            Error::CacheNotReady(_) => "cache_not_ready",
        }
    }

    /// How long to wait before the next try.
    pub fn retry_after(&self) -> Duration {
        match self {
            Error::CleanupPending(_) => Duration::from_secs(2),
            Error::MissingObjectKey(_) => Duration::from_secs(300),
            _ => Duration::from_secs(5),
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
