//! The executor layer: what a NodeTask does on this node, built from the store, the runtime
//! layer and the transfer client. The intake (`crate::intake`) hands it each task through the
//! [`task::Executor`] trait and writes what it returns into the task's status.
//!
//! Layers inside, bottom up (a module imports only from the ones below it): [`error`] (why a
//! task failed: the status message), [`task`] (the contract with the intake), [`mode`] (which
//! runtime mechanism the agent's `--runtime` picks), [`context`] (settings and shared steps),
//! [`result`] (the task's result); then one module per operation ([`checkpoint`], [`pull`],
//! [`restore`], [`delete`]) and [`worker`], which dispatches to them.

pub mod checkpoint;
pub mod context;
pub mod delete;
pub mod error;
pub mod mode;
pub mod pull;
pub mod restore;
pub mod result;
pub mod task;
pub mod worker;

pub use context::WorkerConfig;
pub use error::TaskError;
pub use mode::{PROCESS_PID_ANNOTATION, RuntimeMode};
pub use task::{Attempt, Executor, Progress, ProgressState, TaskOutcome};
pub use worker::Worker;
