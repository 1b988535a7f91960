//! Where the harness finds the binaries it runs: the Kubernetes components, etcd and kwok that
//! `e2e/cluster/build` builds into a versioned cache directory, and the kubectl that
//! `scripts/install-deps` installs.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::workspace_root;

/// The Kubernetes release the harness runs. `e2e/cluster/go.mod` pins the same version (a test
/// checks they agree); the build script names its cache directory after it.
pub const K8S_VERSION: &str = "v1.37.2";

/// The sandbox (pause) image the build script makes from upstream's `build/pause/linux/pause.c`
/// and every real node's containerd pins as its sandbox image; it is imported, never pulled.
pub const PAUSE_IMAGE: &str = "localhost/ferry/pause:3.10.2";
/// The workload image the build script makes: `/ferry-counter`, a static program that prints
/// an increasing count once a second (see `e2e/cluster/node/counter.c`). Imported, never pulled.
pub const COUNTER_IMAGE: &str = "localhost/ferry/counter:latest";

/// The directory `scripts/install-deps` installs kubectl into.
pub const DEFAULT_TOOLS_BIN: &str = "/opt/ferry/tools/bin";

/// The binaries of one Kubernetes release, as built by `e2e/cluster/build`.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The multi-call binary: `kube kube-apiserver|kube-controller-manager|kube-scheduler|kubelet ...`.
    pub kube: PathBuf,
    /// etcd at the version kubeadm pins for this release.
    pub etcd: PathBuf,
    /// kwok, which keeps simulated nodes Ready.
    pub kwok: PathBuf,
    /// kwok's stage configuration (node initialise + heartbeat, pod lifecycle).
    pub kwok_stages: PathBuf,
    /// kubectl.
    pub kubectl: PathBuf,
}

impl Binaries {
    /// The directory the build script writes to: `$FERRY_K8S_BIN`, else
    /// `${FERRY_CACHE:-/var/cache/ferry}/k8s-<version>/bin`.
    pub fn dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("FERRY_K8S_BIN") {
            return PathBuf::from(dir);
        }
        let cache = std::env::var_os("FERRY_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/ferry"));
        cache.join(format!("k8s-{K8S_VERSION}")).join("bin")
    }

    /// The command that builds the binaries, as a user would type it.
    pub fn build_command() -> String {
        workspace_root()
            .join("e2e/cluster/build")
            .display()
            .to_string()
    }

    /// Finds every binary in [`Binaries::dir`], or says which one is missing and how to build it.
    pub fn locate() -> Result<Self> {
        Self::locate_in(&Self::dir())
    }

    /// Finds every binary in `dir` (kubectl: see [`kubectl`]).
    pub fn locate_in(dir: &Path) -> Result<Self> {
        let need = |binary: &'static str| -> Result<PathBuf> {
            let path = dir.join(binary);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::BinaryMissing {
                    binary,
                    path,
                    build_command: Self::build_command(),
                })
            }
        };
        Ok(Self {
            kube: need("kube")?,
            etcd: need("etcd")?,
            kwok: need("kwok")?,
            kwok_stages: need("kwok-stages.yaml")?,
            kubectl: kubectl()?,
        })
    }
}

/// kubectl: `$FERRY_KUBECTL`, else the one `scripts/install-deps` installs, else `kubectl` on PATH.
pub fn kubectl() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FERRY_KUBECTL") {
        return Ok(PathBuf::from(path));
    }
    let default = Path::new(DEFAULT_TOOLS_BIN).join("kubectl");
    if default.is_file() {
        return Ok(default);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("kubectl"))
        .find(|path| path.is_file())
        .ok_or(Error::KubectlMissing { default })
}

/// What a real kubelet + containerd node runs besides `kube kubelet`, from the same build
/// directory: containerd, its runc shim, ctr, runc, the CNI plugins and the local images.
#[derive(Debug, Clone)]
pub struct NodeBinaries {
    /// containerd (built from `github.com/containerd/containerd/v2`).
    pub containerd: PathBuf,
    /// `ctr`, which imports the local images into a node's containerd.
    pub ctr: PathBuf,
    /// runc, with seccomp (it is the shim's `BinaryName`).
    pub runc: PathBuf,
    /// The directory holding `containerd-shim-runc-v2` (containerd finds shims on its PATH).
    pub shim_dir: PathBuf,
    /// The CNI plugin directory (`bridge`, `host-local`, `loopback`).
    pub cni_dir: PathBuf,
    /// [`PAUSE_IMAGE`] as an OCI archive.
    pub pause_image: PathBuf,
    /// [`COUNTER_IMAGE`] as an OCI archive.
    pub counter_image: PathBuf,
}

impl NodeBinaries {
    /// Finds the node binaries in [`Binaries::dir`].
    pub fn locate() -> Result<Self> {
        Self::locate_in(&Binaries::dir())
    }

    /// Finds the node binaries in `dir`, or says which one is missing and how to build it.
    pub fn locate_in(dir: &Path) -> Result<Self> {
        let need = |binary: &'static str| -> Result<PathBuf> {
            let path = dir.join(binary);
            if path.exists() {
                Ok(path)
            } else {
                Err(Error::BinaryMissing {
                    binary,
                    path,
                    build_command: Binaries::build_command(),
                })
            }
        };
        need("containerd-shim-runc-v2")?;
        for plugin in ["cni/bridge", "cni/host-local", "cni/loopback"] {
            need(plugin)?;
        }
        Ok(Self {
            containerd: need("containerd")?,
            ctr: need("ctr")?,
            runc: need("runc")?,
            shim_dir: dir.to_path_buf(),
            cni_dir: need("cni")?,
            pause_image: need("images/pause.oci.tar")?,
            counter_image: need("images/counter.oci.tar")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_kubernetes_version_matches_the_go_module() {
        let go_mod = std::fs::read_to_string(workspace_root().join("e2e/cluster/go.mod")).unwrap();
        let pinned = go_mod
            .lines()
            .map(str::split_whitespace)
            .find_map(|mut words| match (words.next(), words.next()) {
                (Some("k8s.io/kubernetes"), Some(version)) => Some(version.to_string()),
                _ => None,
            })
            .unwrap();
        assert_eq!(pinned, K8S_VERSION);
        assert!(
            go_mod.contains(&format!(
                "k8s.io/kubernetes => k8s.io/kubernetes {K8S_VERSION}"
            )),
            "go.mod must replace k8s.io/kubernetes with {K8S_VERSION}"
        );
        let staging = format!("v0.{}", K8S_VERSION.trim_start_matches("v1."));
        let replaces: Vec<&str> = go_mod
            .lines()
            .filter(|l| l.contains(" => k8s.io/") && !l.contains("k8s.io/kubernetes"))
            .collect();
        assert!(replaces.len() >= 30, "{replaces:#?}");
        for line in replaces {
            assert!(
                line.trim_end().ends_with(&staging),
                "{line} is not pinned to {staging}"
            );
        }
    }

    #[test]
    fn a_missing_binary_error_names_the_build_command() {
        let empty = tempfile::tempdir().unwrap();
        let err = Binaries::locate_in(empty.path()).unwrap_err().to_string();
        assert!(err.contains("kube not found at"), "{err}");
        assert!(err.contains("e2e/cluster/build`"), "{err}");
    }
}
