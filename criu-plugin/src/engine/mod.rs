//! The vendor-neutral restore engine: copy plans, the pipelined copy, the socket protocol
//! between the restored task and the main CRIU process, and the parallel worker.

pub mod copy;
pub mod fdpass;
pub mod images;
pub mod plan;
pub mod protocol;
pub mod restore;
