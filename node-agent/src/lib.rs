//! ferry's node agent (ARCHITECTURE.md §4): checkpoints the node's containers with CRIU, keeps
//! the images in a store, streams them to other nodes' agents and restores them.
//!
//! The binary (`src/main.rs`) wires these together; each module is one idea.

pub mod cluster;
pub mod executor;
pub mod intake;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod transfer;

/// Old path of [`cluster::grants`], kept until `executor` imports it from there.
pub use cluster::grants;
