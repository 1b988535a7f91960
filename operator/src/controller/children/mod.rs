//! The objects the operator creates for a request, built as pure functions (no I/O; the
//! phases under `request/` create them), with deterministic names so that every creation is
//! idempotent and a restarted operator finds what the last run created.
//!
//! * [`names`]: the name of every child and the image's location.
//! * [`meta`]: the labels and controller reference the owned children share.
//! * [`node_task`]: the NodeTasks the agents run (Checkpoint, Restore, Delete).
//! * [`transfer_secret`]: the per-transfer token Secret.
//! * [`restored_pod`]: the pod a migration restores.

pub mod meta;
pub mod names;
pub mod node_task;
pub mod restored_pod;
pub mod transfer_secret;
