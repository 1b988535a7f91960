//! The KFD topology as a pure model: parsed from `/sys/class/kfd/kfd/topology/nodes/*`
//! (under a configurable root, so tests use a temp dir), converted to and from the image's
//! `kfd_device_entry` list, and matched between the checkpointed and the local system to
//! build the user gpu_id → actual gpu_id map of a restore.
//!
//! The matching rules are upstream's (`amdgpu_plugin_topology.c`, CRIU 4.2.1):
//! device geometry must be equal; VRAM size, firmware versions, GWS and cache counts may
//! grow (`≤`), capability must be equal, each under its `KFD_*_CHECK` switch; XGMI hives
//! are matched first (a checkpointed hive onto a local hive at least as large), then the
//! remaining GPUs; links to CPUs must be the same or better, and with `KFD_NUMA_CHECK` the
//! CPU (NUMA) nodes must map consistently. Unlike upstream, a failed match names the
//! property (or the link layout) that ruled each candidate out.
//!
//! [`model`] holds the nodes and links, [`sysfs`] parses them, [`entries`] converts them to and
//! from the image, [`checks`] holds the `KFD_*_CHECK` switches and [`matching`] builds the map.
//! The rest of the backend imports through the re-exports here.

pub mod checks;
pub mod entries;
pub mod matching;
pub mod model;
pub mod sysfs;

pub use checks::{CHECK_VARS, Checks};
pub use matching::{GpuMap, Mismatch, device_mismatches, restore_gpu_map};
pub use model::{
    DEFAULT_TOPOLOGY_ROOT, HEAP_TYPE_PRIVATE, HEAP_TYPE_PUBLIC, IOLINK_TYPE_PCIE, IOLINK_TYPE_XGMI,
    IoLink, Links, Node, Topology,
};
pub use sysfs::parse_properties;
