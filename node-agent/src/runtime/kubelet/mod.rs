//! Path (a): the kubelet's checkpoint API (KEP-2008, `ContainerCheckpoint` gate, beta and on
//! by default since 1.30).
//!
//! `POST https://<node>:10250/checkpoint/{namespace}/{pod}/{container}?timeout=<s>` answers
//! `{"items":["/var/lib/kubelet/checkpoints/checkpoint-<pod>_<ns>-<container>-<time>.tar"]}`.
//! The kubelet authenticates the agent by client certificate (x509, its `clientCAFile`) or by
//! bearer token (webhook authn: the agent's ServiceAccount token) and authorizes
//! `nodes/checkpoint` (the agent's ClusterRole must grant `create` on `nodes/checkpoint`).
//! The archive is on the node's disk; the agent sees the node's checkpoints dir through a
//! hostPath mount (`local_checkpoints_dir`) and moves the archive into the image as
//! `<container>.tar` (so the kubelet's dir does not fill up), an
//! [`crate::store::ImageKind::CheckpointArchive`].
//!
//! When ferry's plugin is in CRIU's plugin dir, it runs inside the kubelet's (the runtime's)
//! CRIU too, and its dump stats are in the archive (`checkpoint/ferry-dump-stats.json`): they
//! are read from the tar ([`archive::archive_member`]) into the outcome and the image's GPU
//! vendor.
//!
//! The checkpoint API always leaves the container running: a stop-after-checkpoint request
//! gets `still_running = true` and the caller deletes the pod.
//!
//! The client is hyper's HTTP/1 connection over tokio-rustls on a private current-thread
//! runtime: the trait is synchronous (the executor calls it on a blocking thread) and one
//! request per container does not need a pool.

//!
//! [`api`] is the HTTP client, [`archive`] reads one member of an archive, [`checkpoint`] is
//! the [`crate::runtime::checkpoint::Checkpointer`] built from them.

pub mod api;
pub mod archive;
pub mod checkpoint;

pub use api::{KUBELET_CHECKPOINTS_DIR, KUBELET_PORT, KubeletApi};
pub use archive::archive_member;
