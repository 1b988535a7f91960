//! ferry's shared API: CRD types, names and the CRIU plugin stats format. No I/O.
//!
//! Without the default `crd` feature only [`names`], [`validation`] and [`stats`] are built,
//! with no kube dependency: the CRIU plugin links this crate that way.

pub mod names;
pub mod plugin_env;
pub mod stats;
pub mod validation;

#[cfg(feature = "crd")]
pub mod agent_lease;
#[cfg(feature = "crd")]
pub mod checkpoint_request;
#[cfg(feature = "crd")]
pub mod crdgen;
#[cfg(feature = "crd")]
pub mod node_task;
#[cfg(feature = "crd")]
pub mod outcome;
#[cfg(feature = "crd")]
mod schema;
#[cfg(feature = "crd")]
pub mod storage;

#[cfg(feature = "crd")]
pub use checkpoint_request::{
    CheckpointInfo, CheckpointRequest, CheckpointRequestSpec, CheckpointRequestStatus, GpuInfo,
    GpuOptions, GpuVendor, MigrateSpec, RequestPhase, RequestTimings,
};
#[cfg(feature = "crd")]
pub use node_task::{
    ImageRef, NodeTask, NodeTaskSpec, NodeTaskStatus, PodReference, SecretKeyRef, TaskOperation,
    TaskOptions, TaskPhase, TaskResult, TaskTimings, TransferSource, TransferStats,
};
#[cfg(feature = "crd")]
pub use outcome::{ImageSummary, StepTimings};
#[cfg(feature = "crd")]
pub use storage::{HostPathStorage, PvcStorage, StorageSpec};

/// The API group of every ferry CRD.
pub const GROUP: &str = "ferry.dev";
/// The API version of every ferry CRD.
pub const VERSION: &str = "v1alpha1";
