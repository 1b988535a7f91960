//! The runtime layer: how the agent checkpoints and restores a workload on this node.
//!
//! Two traits, [`checkpoint::Checkpointer`] and [`restore::Restorer`], each with one
//! implementation per mechanism: CRIU on a process tree ([`process_tree`]), runc ([`runc`]),
//! the kubelet's checkpoint API ([`kubelet`]), containerd's checkpoint-image restore
//! ([`containerd`]) and CRIU into a placeholder container ([`placeholder`]). Everything here
//! is synchronous and knows nothing of NodeTasks: the executor calls it on a blocking thread
//! and turns [`RuntimeError`] into a task's failure.
//!
//! Layers inside, bottom up (a module imports only from the ones below it):
//! - [`error`], [`control`] (a task's deadline and cancel switch for its tools), then [`exec`]
//!   (running a tool in its own process group with a time limit), [`layout`] (file names and
//!   restore directories), [`criu_log`] (reading CRIU's log), [`plugin`] (ferry's plugin's
//!   environment and stats);
//! - [`criu`] (the `criu` binary), [`checkpoint`] and [`restore`] (the traits and their
//!   jobs);
//! - the mechanisms: [`process_tree`], [`runc`], [`kubelet`], [`containerd`], [`placeholder`].

pub mod checkpoint;
pub mod containerd;
pub mod control;
pub mod criu;
pub mod criu_log;
pub mod error;
pub mod exec;
pub mod kubelet;
pub mod layout;
pub mod placeholder;
pub mod plugin;
pub mod process_tree;
pub mod restore;
pub mod runc;

pub use error::{Result, RuntimeError};
