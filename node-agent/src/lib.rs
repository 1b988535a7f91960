//! ferry's node agent (DESIGN.md §4): checkpoints the node's containers with CRIU, keeps the
//! images in a store, streams them to other nodes' agents and restores them.
//!
//! The binary (`src/main.rs`) wires these together; each module is one idea.

pub mod checkpoint;
pub mod criu;
mod exec;
pub mod grants;
pub mod http;
pub mod image_gc;
pub mod in_use;
pub mod intake;
pub mod kubelet;
pub mod lease;
pub mod metrics;
pub mod process_tree;
pub mod restore;
pub mod runc;
pub mod store;
pub mod transfer;
pub mod worker;
