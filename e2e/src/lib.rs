//! ferry's end-to-end harness.
//!
//! [`Cluster`] starts a throwaway Kubernetes control plane on loopback from the binaries that
//! `e2e/cluster/build` builds from Go modules (etcd, kube-apiserver, optionally
//! kube-controller-manager, kube-scheduler, and kwok for simulated nodes), with a generated
//! PKI and ferry's CRDs applied, and stops it on drop; with [`Options::with_real_nodes`] it also
//! runs real kubelet + containerd nodes ([`node`]).
//! The crate also holds helpers shared by tests that drive real CRIU.

pub mod binaries;
pub mod cluster;
pub mod counter;
pub mod error;
pub mod identity;
pub mod migration;
pub mod node;
pub mod pki;
pub mod process;

use std::path::PathBuf;

pub use binaries::{Binaries, COUNTER_IMAGE, K8S_VERSION, NodeBinaries, PAUSE_IMAGE};
pub use cluster::{Cluster, Options};
pub use error::{Error, Result};
pub use node::RealNode;
pub use pki::User;

/// The workspace root (where `Cargo.toml` with `[workspace]` lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}
