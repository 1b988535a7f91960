//! ferry's end-to-end harness. The cluster harness (real etcd, kube-apiserver, kubelet and
//! containerd built from Go modules) lands with the e2e issue; until then this crate holds
//! only helpers shared by tests that drive real CRIU.

use std::path::PathBuf;

/// The workspace root (where `Cargo.toml` with `[workspace]` lives).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}
