//! The environment variables ferry's CRIU plugin reads, one constant per name, so that the
//! plugin and everything that starts CRIU with it (the node agent, the tests, the benchmarks)
//! spell them once. CRIU does not pass its options to plugins, so the environment of the
//! `criu` process is the plugin's only configuration.
//!
//! Values and defaults are documented where each is parsed: the plugin-wide settings in the
//! plugin's `config` module, each backend's settings in its own `config` module.

// ----- plugin-wide -------------------------------------------------------------------------

/// `1` (default): device memory is refilled in parallel with host memory; `0`: it is copied
/// inside RESTORE_EXT_FILE (upstream's sequential order).
pub const FERRY_PARALLEL_RESTORE: &str = "FERRY_PARALLEL_RESTORE";
/// Bytes per read/copy chunk of the pipelined device copy (suffix K, M, G; default 8M).
pub const FERRY_CHUNK_SIZE: &str = "FERRY_CHUNK_SIZE";
/// Most device copies running at once (default 0: one per device, no bound).
pub const FERRY_WORKERS: &str = "FERRY_WORKERS";
/// Seconds a restore worker waits on the restore socket before failing the restore.
pub const FERRY_IO_TIMEOUT: &str = "FERRY_IO_TIMEOUT";
/// Tests only: a fault to inject (`copy-error`, `child-exit-mid-send`, `corrupt-header`,
/// `panic`). Never set in production.
pub const FERRY_TEST_FAULT: &str = "FERRY_TEST_FAULT";
/// Plugin-host harness only: the image directory when CRIU's `criu_get_image_dir` is absent.
pub const FERRY_IMAGES_DIR: &str = "FERRY_IMAGES_DIR";

// ----- sim backend -------------------------------------------------------------------------

/// Where the simulated GPU's device handles live (default `/var/lib/ferry-sim`).
pub const FERRY_SIM_ROOT: &str = "FERRY_SIM_ROOT";
/// Where the simulated GPU's device memory lives (default `/dev/shm/ferry-sim`).
pub const FERRY_SIM_MEM: &str = "FERRY_SIM_MEM";
/// The simulated copy engine's bandwidth in bytes/s (suffix K, M, G; default 4G).
pub const FERRY_SIM_BANDWIDTH: &str = "FERRY_SIM_BANDWIDTH";

// ----- NVIDIA backend ----------------------------------------------------------------------

/// The CUDA driver library to load (default `libcuda.so.1`; tests point it at a stand-in).
pub const FERRY_CUDA_LIB: &str = "FERRY_CUDA_LIB";
/// Milliseconds `cuCheckpointProcessLock` may wait for running work (default 10000).
pub const FERRY_CUDA_LOCK_TIMEOUT_MS: &str = "FERRY_CUDA_LOCK_TIMEOUT_MS";
/// Milliseconds a batch of CUDA checkpoint/restore/unlock calls may take before the hook
/// gives up on the processes still in the driver and fails (default 600000).
pub const FERRY_CUDA_CALL_TIMEOUT_MS: &str = "FERRY_CUDA_CALL_TIMEOUT_MS";
/// `1`: the dump leaves the tasks running (`criu dump -R`), so CUDA processes are put back
/// after it; `0`: it does not. Unset: the plugin reads CRIU's command line.
pub const FERRY_LEAVE_RUNNING: &str = "FERRY_LEAVE_RUNNING";

// ----- AMDGPU backend ----------------------------------------------------------------------

/// The KFD topology root (default `/sys/class/kfd/kfd/topology`; tests use a temp dir).
pub const FERRY_KFD_TOPOLOGY: &str = "FERRY_KFD_TOPOLOGY";
/// Where `kfd` and `dri/renderD*` are (default `/dev`).
pub const FERRY_AMDGPU_DEV: &str = "FERRY_AMDGPU_DEV";
/// Upstream's name: the host staging buffer per GPU (suffix K, M, G; default 0 = 64M).
pub const KFD_MAX_BUFFER_SIZE: &str = "KFD_MAX_BUFFER_SIZE";
/// Upstream's topology-match switch (default 1): firmware versions may only grow.
pub const KFD_FW_VER_CHECK: &str = "KFD_FW_VER_CHECK";
/// Upstream's topology-match switch (default 1): SDMA firmware versions may only grow.
pub const KFD_SDMA_FW_VER_CHECK: &str = "KFD_SDMA_FW_VER_CHECK";
/// Upstream's topology-match switch (default 1): cache counts may only grow.
pub const KFD_CACHES_COUNT_CHECK: &str = "KFD_CACHES_COUNT_CHECK";
/// Upstream's topology-match switch (default 1): GWS counts may only grow.
pub const KFD_NUM_GWS_CHECK: &str = "KFD_NUM_GWS_CHECK";
/// Upstream's topology-match switch (default 1): VRAM sizes may only grow.
pub const KFD_VRAM_SIZE_CHECK: &str = "KFD_VRAM_SIZE_CHECK";
/// Upstream's topology-match switch (default 1): CPU (NUMA) nodes must map consistently.
pub const KFD_NUMA_CHECK: &str = "KFD_NUMA_CHECK";
/// Upstream's topology-match switch (default 1): GPU capabilities must be equal.
pub const KFD_CAPABILITY_CHECK: &str = "KFD_CAPABILITY_CHECK";

/// Every name above, for callers that pass the plugin's environment through as a whole.
pub const ALL: [&str; 23] = [
    FERRY_PARALLEL_RESTORE,
    FERRY_CHUNK_SIZE,
    FERRY_WORKERS,
    FERRY_IO_TIMEOUT,
    FERRY_TEST_FAULT,
    FERRY_IMAGES_DIR,
    FERRY_SIM_ROOT,
    FERRY_SIM_MEM,
    FERRY_SIM_BANDWIDTH,
    FERRY_CUDA_LIB,
    FERRY_CUDA_LOCK_TIMEOUT_MS,
    FERRY_CUDA_CALL_TIMEOUT_MS,
    FERRY_LEAVE_RUNNING,
    FERRY_KFD_TOPOLOGY,
    FERRY_AMDGPU_DEV,
    KFD_MAX_BUFFER_SIZE,
    KFD_FW_VER_CHECK,
    KFD_SDMA_FW_VER_CHECK,
    KFD_CACHES_COUNT_CHECK,
    KFD_NUM_GWS_CHECK,
    KFD_VRAM_SIZE_CHECK,
    KFD_NUMA_CHECK,
    KFD_CAPABILITY_CHECK,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_listed_once() {
        let mut names = ALL.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }
}
