//! ferry's node agent (ARCHITECTURE.md §4): checkpoints the node's containers with CRIU, keeps
//! the images in a store, streams them to other nodes' agents and restores them.
//!
//! Layers, top down (a module imports only from layers below it):
//! - [`intake`]: the NodeTask watch, queue, heartbeats and status writes (faces the cluster);
//! - [`executor`]: what one NodeTask does on this node (checkpoint, pull, restore, delete);
//! - [`runtime`]: CRIU, runc, process trees, the kubelet API and containerd, behind the
//!   `Checkpointer`/`Restorer` traits; [`transfer`]: the agent-to-agent image pull (TLS server
//!   and client); [`cluster`]: the agent's Lease and the transfer grants;
//! - [`store`]: the image store (manifest, digests, staging, GC); [`telemetry`]: metrics.
//!
//! The binary (`src/main.rs`) wires these together.

pub mod cluster;
pub mod executor;
pub mod intake;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod transfer;
