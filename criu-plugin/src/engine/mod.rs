//! The vendor-neutral restore engine: the pipelined copy of one device, the socket protocol
//! between a restored task and the main CRIU process, and the parallel worker. It sees the
//! backends only through [`BackendLookup`](crate::contract::BackendLookup).

pub mod copy;
pub mod fdpass;
pub mod protocol;
pub mod restore;
mod results;
mod run_plan;
mod slots;
mod worker;
