//! Why a task failed. The `Display` text is the NodeTask's status message, so each variant
//! keeps the wording the agent has always written (the operator copies it into the
//! CheckpointRequest's conditions and Events); the lower layers' errors are carried typed,
//! as sources, not flattened into strings.

use std::path::PathBuf;

use crate::runtime::RuntimeError;
use crate::store::StoreError;
use crate::transfer::TransferError;

/// A task's failure, as the task's status message says it.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    // ----- the image store ---------------------------------------------------------------
    /// The task names PVC storage.
    #[error("PVC image storage is not supported by this agent yet: use hostPath storage")]
    PvcStorage,
    /// The task's hostPath is not one of this agent's stores.
    #[error("{0}; refusing to write outside them")]
    NotAStore(#[source] StoreError),
    /// The store failed.
    #[error("image store: {0}")]
    Store(#[source] StoreError),
    /// The task's image cannot be held or opened.
    #[error("image {location}: {source}")]
    Image {
        /// The image's location in the store.
        location: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// Another pod's image is already at the location.
    #[error("image {location} already exists for another pod; images are never overwritten")]
    ImageOfAnotherPod {
        /// The image's location in the store.
        location: String,
    },
    /// A local image does not match its manifest.
    #[error("image {location} is corrupt: {source}")]
    Corrupt {
        /// The image's location in the store.
        location: String,
        /// The mismatch.
        #[source]
        source: StoreError,
    },
    /// Deleting the image failed.
    #[error("deleting image {location}: {source}")]
    Delete {
        /// The image's location in the store.
        location: String,
        /// Why.
        #[source]
        source: StoreError,
    },

    // ----- the pod -----------------------------------------------------------------------
    /// The API server did not answer for the pod.
    #[error("reading pod: {0}")]
    ReadPod(#[source] kube::Error),
    /// The pod is gone.
    #[error("pod {namespace}/{name} not found")]
    PodNotFound {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
    },
    /// The pod was deleted and created again since the task was written.
    #[error("pod {namespace}/{name} was re-created (uid {have}, the task names {want})")]
    PodRecreated {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
        /// The pod's uid now.
        have: String,
        /// The uid the task names.
        want: String,
    },
    /// `process` runtime: the pod names no process tree.
    #[error("process runtime: pod {pod} has no valid {annotation} annotation")]
    NoPidAnnotation {
        /// The pod's name.
        pod: String,
        /// The annotation ([`crate::executor::mode::PROCESS_PID_ANNOTATION`]).
        annotation: &'static str,
    },
    /// `runc` runtime: the container has not started yet.
    #[error("container {container} of pod {pod} has no runtime id yet")]
    NoRuntimeId {
        /// The container's name.
        container: String,
        /// The pod's name.
        pod: String,
    },

    // ----- the runtime -------------------------------------------------------------------
    /// Checkpointing failed (CRIU's error lines and log are in the runtime's error).
    #[error(transparent)]
    Checkpoint(#[from] RuntimeError),
    /// Restoring failed; the image stays.
    #[error("{0}; the image is kept")]
    Restore(#[source] RuntimeError),
    /// An earlier agent process was restoring this task when it stopped.
    #[error(
        "the agent restarted while CRIU was restoring this image; the restored process state is unknown, so the restore is not repeated (the image is kept)"
    )]
    RestoreInterrupted,
    /// `runc` runtime: restoring into a pod is not built.
    #[error(
        "restoring into a pod through the container runtime (containerd checkpoint-image restore) is not wired into this agent build; the image is kept"
    )]
    RuncRestoreNotWired,
    /// `containerd` runtime: the image holds CRIU images, not kubelet archives.
    #[error(
        "image {location} holds CRIU image files, not kubelet checkpoint archives: the containerd runtime restores only archives; the image is kept"
    )]
    NotAnArchiveImage {
        /// The image's location in the store.
        location: String,
    },
    /// The image lists no container to restore.
    #[error("image {location} names no container")]
    NoContainers {
        /// The image's location in the store.
        location: String,
    },
    /// The task's private work directory cannot be set up.
    #[error("work dir {}: {source}", path.display())]
    WorkDir {
        /// The directory (or file in it) that failed.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The blocking thread that ran a step panicked or was cancelled.
    #[error("{what} worker: {source}")]
    Worker {
        /// `checkpoint`, `verify`, `restore`, `import`.
        what: &'static str,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },

    // ----- the transfer ------------------------------------------------------------------
    /// The task names no certificate to pin the source by.
    #[error(
        "the task names no source certificate (certSha256); refusing to pull over an unpinned connection"
    )]
    UnpinnedSource,
    /// The API server did not answer for the token Secret.
    #[error("reading the transfer token: {0}")]
    ReadToken(#[source] kube::Error),
    /// The token Secret is gone.
    #[error("transfer token Secret {secret} not found")]
    TokenSecretMissing {
        /// The Secret's name.
        secret: String,
    },
    /// The token Secret lacks the key.
    #[error("transfer token Secret {secret} has no key {key}")]
    TokenKeyMissing {
        /// The Secret's name.
        secret: String,
        /// The key.
        key: String,
    },
    /// The pull failed.
    #[error("pull from {endpoint} failed: {source}")]
    Pull {
        /// The source agent.
        endpoint: String,
        /// Why.
        #[source]
        source: TransferError,
    },

    // ----- the intake --------------------------------------------------------------------
    /// The task ran past `options.timeoutSeconds`.
    #[error("timed out after {seconds} s (options.timeoutSeconds)")]
    TimedOut {
        /// The task's timeout.
        seconds: i32,
    },
    /// The NodeTask was deleted while it ran.
    #[error(
        "the NodeTask was deleted while it ran; its running tool was killed and nothing was published"
    )]
    Deleted,
    /// The executor panicked (a bug): the task is stopped, the agent carries on.
    #[error("the agent hit a bug running this task (panic: {message}); the task was stopped")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The task names another node (finding 10): not this agent's to run.
    #[error(
        "the task is for node {task_node:?}, not this agent's node {node:?}; refusing to run it"
    )]
    NotThisNode {
        /// `spec.nodeName`.
        task_node: String,
        /// This node.
        node: String,
    },
    /// The task's pod is in another namespace than the task (finding 10).
    #[error(
        "the task's pod is in namespace {pod_namespace:?}, not in the task's namespace {namespace:?}; refusing to run it"
    )]
    PodNamespace {
        /// `spec.pod.namespace`.
        pod_namespace: String,
        /// The task's namespace.
        namespace: String,
    },
    /// The task's image location is not its request's (finding 10): a task may only touch
    /// `<its namespace>/<its request>`.
    #[error(
        "image location {location:?} is not this task's request's location {want:?}; refusing to touch it"
    )]
    Location {
        /// `spec.image.location`.
        location: String,
        /// `<namespace>/<spec.checkpointRequest>`.
        want: String,
    },
    /// The agent was stopped and the grace period ran out.
    #[error(
        "the agent on {node} was stopped (SIGTERM) and the task did not finish within {grace_s} s; nothing was published"
    )]
    Stopped {
        /// This node.
        node: String,
        /// The grace period, in seconds.
        grace_s: u64,
    },
}
