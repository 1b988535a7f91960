//! Settings of the AMDGPU backend, read once when the backend is built in `init` (invalid
//! values are logged and ignored, as upstream does).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KFD_FW_VER_CHECK`, `KFD_SDMA_FW_VER_CHECK`, `KFD_CACHES_COUNT_CHECK`, `KFD_NUM_GWS_CHECK`, `KFD_VRAM_SIZE_CHECK`, `KFD_NUMA_CHECK`, `KFD_CAPABILITY_CHECK` | `1` | upstream's topology-match switches |
//! | `KFD_MAX_BUFFER_SIZE` | `0` (= 64M) | host staging buffer per GPU (suffix K, M, G) |
//! | `FERRY_KFD_TOPOLOGY` | `/sys/class/kfd/kfd/topology` | topology root (tests) |
//! | `FERRY_AMDGPU_DEV` | `/dev` | where `kfd` and `dri/renderD*` are |

use std::path::PathBuf;

use ferry_api::plugin_env::{FERRY_AMDGPU_DEV, FERRY_KFD_TOPOLOGY, KFD_MAX_BUFFER_SIZE};

use super::topology::{Checks, DEFAULT_TOPOLOGY_ROOT};
use crate::config::parse_size;

/// The backend's settings.
#[derive(Clone, Debug)]
pub struct AmdConfig {
    pub checks: Checks,
    /// `KFD_MAX_BUFFER_SIZE` (0 = unset).
    pub max_buffer_size: u64,
    pub topology_root: PathBuf,
    pub dev_root: PathBuf,
}

impl AmdConfig {
    /// Reads the settings through `get` (invalid values are logged and ignored, as upstream).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> AmdConfig {
        let max_buffer_size = match get(KFD_MAX_BUFFER_SIZE) {
            Some(v) => parse_size(KFD_MAX_BUFFER_SIZE, &v).unwrap_or_else(|e| {
                tracing::warn!("ignoring {e}");
                0
            }),
            None => 0,
        };
        AmdConfig {
            checks: Checks::from_lookup(&get),
            max_buffer_size,
            topology_root: get(FERRY_KFD_TOPOLOGY)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_TOPOLOGY_ROOT)),
            dev_root: get(FERRY_AMDGPU_DEV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/dev")),
        }
    }

    /// Settings from the process environment.
    pub fn from_env() -> AmdConfig {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// `/dev/kfd` (under the device root).
    pub fn kfd_path(&self) -> PathBuf {
        self.dev_root.join("kfd")
    }
}
